from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec

from rag.agent.events import CitationEvent, ToolCallRecord, UsageOut
from storage.repositories.conversations import Conversation, StoredMessage

Title = Annotated[str, msgspec.Meta(max_length=200)]
Content = Annotated[str, msgspec.Meta(min_length=1, max_length=20_000)]
CollectionScope = Annotated[list[UUID], msgspec.Meta(min_length=1, max_length=100)]


class CreateConversation(msgspec.Struct, forbid_unknown_fields=True):
    title: Title = ""
    collections: CollectionScope | None = None
    """The collections the agent searches (default: all of the tenant's)."""


class ConversationPage(msgspec.Struct):
    items: list[Conversation]
    next_cursor: str | None


class ConversationWithMessages(msgspec.Struct, kw_only=True):
    id: UUID
    title: str
    collection_ids: list[UUID] | None
    created_at: datetime
    updated_at: datetime
    messages: list[StoredMessage]
    """The latest messages, oldest first."""
    has_more: bool
    """Older messages exist beyond `messages_limit`."""


class SendMessage(msgspec.Struct, forbid_unknown_fields=True):
    content: Content
    stream: bool = False
    """true: Server-Sent Events (step, tool_call, tool_result, token, citation, done | error)."""
    collections: CollectionScope | None = None
    """Scope this answer to these collections (default: the conversation's)."""


class HistoryMessage(msgspec.Struct, forbid_unknown_fields=True):
    role: Literal["user", "assistant"]
    content: Annotated[str, msgspec.Meta(max_length=20_000)]


class OneShotChat(msgspec.Struct, forbid_unknown_fields=True):
    message: Content
    history: Annotated[list[HistoryMessage], msgspec.Meta(max_length=50)] = []
    """Earlier turns, oldest first (nothing is stored: use conversations for that)."""
    stream: bool = False
    collections: CollectionScope | None = None


class ChatAnswer(msgspec.Struct, kw_only=True):
    """The answer (`stream: false`), and the data of the `done` event (`stream: true`)."""

    conversation_id: UUID | None
    message_id: UUID | None
    """The stored assistant message (None for one-shot chats)."""
    answer: str
    citations: list[CitationEvent]
    tool_calls: list[ToolCallRecord]
    finish_reason: str
    steps: int
    usage: UsageOut
    latency_ms: int
    model: str
    type: Literal["done"] = "done"


# --- OpenAI-compatible facade ----------------------------------------------------------------


class OpenAIMessage(msgspec.Struct):
    role: str
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class ChatCompletionRequest(msgspec.Struct):
    """OpenAI's request; sampling options (temperature, top_p, ...) are accepted and ignored:
    the agent decides how to answer."""

    model: Annotated[str, msgspec.Meta(min_length=1, max_length=300)]
    messages: Annotated[list[OpenAIMessage], msgspec.Meta(min_length=1, max_length=200)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    user: str | None = None


class ModelCard(msgspec.Struct):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "quarry"


class ModelList(msgspec.Struct):
    data: list[ModelCard]
    object: str = "list"
