"""Errors of the embedding backends, mapped to HTTP problems through `core.errors`."""

from __future__ import annotations

from core.errors import BadRequest, QuarryError, Unavailable

__all__ = ["EmbedderMisconfigured", "EmbeddingRejected", "EmbeddingUnavailable"]


class EmbeddingRejected(BadRequest):
    """The provider refused this input (HTTP 400/413/422...): retrying the same call won't help."""


class EmbedderMisconfigured(QuarryError):
    """Our side is wrong: bad API key, unknown model or URL, or a dimension other than configured."""

    title = "Embedder misconfigured"
    type_slug = "embedder-misconfigured"


class EmbeddingUnavailable(Unavailable):
    """The provider kept failing (429/5xx/network) until the retries ran out, or answered nonsense."""
