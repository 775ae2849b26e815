"""Embedding backends behind one `Embedder` protocol.

`make_embedder(settings)` returns the configured backend: all-MiniLM-L6-v2 on onnxruntime
(default) or an OpenAI-compatible endpoint. `HashingEmbedder` exists for tests only and is
never returned by it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rag.embedders.base import Embedder, Vectors, l2_normalize
from rag.embedders.errors import EmbedderMisconfigured, EmbeddingRejected, EmbeddingUnavailable
from rag.embedders.hashing import HashingEmbedder
from rag.embedders.minilm import MiniLMEmbedder, load_tokenizer, tokenizer_path
from rag.embedders.openai_compat import OpenAIEmbedder

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = [
    "Embedder", "EmbedderMisconfigured", "EmbeddingRejected", "EmbeddingUnavailable", "HashingEmbedder",
    "MiniLMEmbedder", "OpenAIEmbedder", "Vectors", "l2_normalize", "load_tokenizer", "make_embedder",
    "tokenizer_path",
]


def make_embedder(settings: Settings, *, for_queries: bool = False) -> Embedder:
    """The embedder `settings.embedder` names; nothing is loaded or connected until first use.
    `for_queries`: the API's, which embeds search queries (see `MiniLMEmbedder.from_settings`)."""
    if settings.embedder == "minilm":
        return MiniLMEmbedder.from_settings(settings, for_queries=for_queries)
    if settings.embedder == "openai":
        return OpenAIEmbedder.from_settings(settings)
    raise ValueError(f"unknown embedder {settings.embedder!r}")  # pragma: no cover - Literal-checked
