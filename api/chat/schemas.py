from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec

from rag.agent.events import CitationEvent, ToolCallRecord, UsageOut
from storage.repositories.conversations import Conversation, StoredMessage

# Caps on what a client sends the agent: every character is prompt tokens and CPU (retrieval
# heuristics, citation stripping) spent on its behalf, so a request is bounded per message, in
# history length and in total, besides QUARRY_MAX_JSON_BYTES for the whole body.
MAX_MESSAGE_CHARS = 20_000
MAX_HISTORY_MESSAGES = 50
MAX_OPENAI_MESSAGES = 100
MAX_CONTENT_PARTS = 50
MAX_TOTAL_CHARS = 100_000
"""Characters of all messages of one request together (question, history, instructions)."""

Title = Annotated[str, msgspec.Meta(max_length=200)]
Content = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_MESSAGE_CHARS)]
CollectionScope = Annotated[list[UUID], msgspec.Meta(min_length=1, max_length=100)]


def _check_total(chars: int) -> None:
    # Raised while decoding, so it arrives as a 422 like any other shape error.
    if chars > MAX_TOTAL_CHARS:
        raise ValueError(f"the messages hold {chars} characters together; at most {MAX_TOTAL_CHARS} are allowed")


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
    content: Annotated[str, msgspec.Meta(max_length=MAX_MESSAGE_CHARS)]


class OneShotChat(msgspec.Struct, forbid_unknown_fields=True):
    message: Content
    history: Annotated[list[HistoryMessage], msgspec.Meta(max_length=MAX_HISTORY_MESSAGES)] = []
    """Earlier turns, oldest first (nothing is stored: use conversations for that). The message and
    its history hold at most 100,000 characters together."""
    stream: bool = False
    collections: CollectionScope | None = None

    def __post_init__(self) -> None:
        _check_total(len(self.message) + sum(len(m.content) for m in self.history))


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
    role: Annotated[str, msgspec.Meta(max_length=32)]
    content: (Annotated[str, msgspec.Meta(max_length=MAX_MESSAGE_CHARS)]
              | Annotated[list[dict[str, Any]], msgspec.Meta(max_length=MAX_CONTENT_PARTS)] | None) = None
    """Text, or content parts (`{"type": "text", "text": ...}`) of at most 20,000 characters together."""

    def __post_init__(self) -> None:
        if isinstance(self.content, list) and (chars := self.chars) > MAX_MESSAGE_CHARS:
            raise ValueError(f"a message's text parts hold {chars} characters; at most {MAX_MESSAGE_CHARS} "
                             "are allowed per message")

    @property
    def chars(self) -> int:
        if isinstance(self.content, str):
            return len(self.content)
        if self.content is None:
            return 0
        return sum(len(part["text"]) for part in self.content if isinstance(part.get("text"), str))


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class ChatCompletionRequest(msgspec.Struct):
    """OpenAI's request; sampling options (temperature, top_p, ...) are accepted and ignored:
    the agent decides how to answer."""

    model: Annotated[str, msgspec.Meta(min_length=1, max_length=300)]
    messages: Annotated[list[OpenAIMessage], msgspec.Meta(min_length=1, max_length=MAX_OPENAI_MESSAGES)]
    """At most 100,000 characters together."""
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    user: Annotated[str, msgspec.Meta(max_length=256)] | None = None

    def __post_init__(self) -> None:
        _check_total(sum(m.chars for m in self.messages))


class ModelCard(msgspec.Struct):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "quarry"


class ModelList(msgspec.Struct):
    data: list[ModelCard]
    object: str = "list"
