"""Errors of LLM providers. Each has a stable `code` that the agent's `error` event carries."""

from __future__ import annotations

from typing import ClassVar

from core.errors import BadRequest, QuarryError, Unavailable

__all__ = ["LLMError", "LLMMisconfigured", "LLMRejected", "LLMTimeout", "LLMUnavailable"]


class LLMError(QuarryError):
    code: ClassVar[str] = "llm_error"
    retryable: ClassVar[bool] = False


class LLMUnavailable(LLMError, Unavailable):
    """The provider kept failing (429/5xx/network) until the retries ran out, or broke mid-stream."""

    code = "llm_unavailable"
    retryable = True


class LLMTimeout(LLMUnavailable):
    """The provider stalled: no byte within the read timeout."""

    code = "llm_timeout"


class LLMMisconfigured(LLMError):
    """Our side is wrong: bad API key, unknown model or URL (401/403/404)."""

    title = "LLM misconfigured"
    type_slug = "llm-misconfigured"
    code = "llm_misconfigured"


class LLMRejected(LLMError, BadRequest):
    """The provider refused the request (400/413/422, e.g. the context is too long)."""

    code = "llm_rejected"
