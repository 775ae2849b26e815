"""What the agent emits while it works. Each event's `type` is also its SSE event name."""

from __future__ import annotations

from typing import Any, TypeAlias
from uuid import UUID

import msgspec

__all__ = [
    "AgentEvent", "CitationEvent", "DoneEvent", "ErrorEvent", "SourceRef", "StepEvent", "TokenEvent",
    "ToolCallEvent", "ToolCallRecord", "ToolResultEvent", "UsageOut",
]


class _Event(msgspec.Struct, tag_field="type", kw_only=True):
    pass


class StepEvent(_Event, tag="step"):
    step: int
    max_steps: int


class ToolCallEvent(_Event, tag="tool_call"):
    step: int
    id: str
    name: str
    arguments: dict[str, Any] | str
    """The parsed arguments, or the raw text when the model wrote invalid JSON."""


class SourceRef(msgspec.Struct, kw_only=True):
    n: int
    chunk_id: int
    document_id: UUID
    title: str


class ToolResultEvent(_Event, tag="tool_result"):
    step: int
    id: str
    name: str
    ok: bool
    error: str | None = None
    sources: list[SourceRef] = []
    """The chunks the tool returned, numbered for citation."""


class TokenEvent(_Event, tag="token"):
    text: str
    step: int


class CitationEvent(_Event, tag="citation"):
    n: int
    chunk_id: int
    document_id: UUID
    collection_id: UUID
    title: str
    uri: str | None
    heading: str | None
    page: int | None
    quote: str
    """The sentence of the chunk that best matches the cited statement."""


class UsageOut(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class DoneEvent(_Event, tag="done"):
    answer: str
    finish_reason: str
    """stop | length | max_steps | max_tokens"""
    steps: int
    usage: UsageOut
    citations: list[CitationEvent]


class ErrorEvent(_Event, tag="error"):
    code: str
    """deadline_exceeded | llm_unavailable | llm_timeout | llm_misconfigured | llm_rejected | internal"""
    message: str
    retryable: bool


AgentEvent: TypeAlias = (
    StepEvent | ToolCallEvent | ToolResultEvent | TokenEvent | CitationEvent | DoneEvent | ErrorEvent
)


class ToolCallRecord(msgspec.Struct, kw_only=True):
    """A tool call as persisted with the assistant message."""

    step: int
    id: str
    name: str
    arguments: str
    ok: bool
    error: str | None = None
    sources: list[int] = []
    """Chunk ids the tool returned."""
