"""LLM providers behind one streaming chat-completion protocol (`LLMProvider`).

`make_llm_provider(settings)` returns the configured one: the offline provider (no model:
heuristic decomposition, multi-query retrieval, extractive answers) or any OpenAI-compatible
chat-completions endpoint. Nothing connects until the first request.

The offline provider lives in `rag.llm.offline` and is imported lazily here: it reads the
agent's tool protocol (`rag.agent.protocol`), which itself imports `rag.llm.base`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rag.llm.base import (
    Completion,
    Delta,
    Finish,
    LLMProvider,
    Message,
    TextDelta,
    ToolCall,
    ToolCallAssembler,
    ToolCallDelta,
    ToolSpec,
    Usage,
    collect,
    estimate_tokens,
)
from rag.llm.errors import LLMError, LLMMisconfigured, LLMRejected, LLMTimeout, LLMUnavailable
from rag.llm.openai_compat import OpenAIChatProvider

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = [
    "Completion", "Delta", "Finish", "LLMError", "LLMMisconfigured", "LLMProvider", "LLMRejected",
    "LLMTimeout", "LLMUnavailable", "Message", "OpenAIChatProvider", "TextDelta", "ToolCall",
    "ToolCallAssembler", "ToolCallDelta", "ToolSpec", "Usage", "collect", "estimate_tokens", "make_llm_provider",
]


def make_llm_provider(settings: Settings) -> LLMProvider:
    if settings.llm_provider == "openai":
        return OpenAIChatProvider.from_settings(settings)
    from rag.llm.offline import OfflineProvider

    return OfflineProvider(min_coverage=settings.offline_min_coverage)
