"""Conversations and their messages (run inside `tenant_tx` with `principal_settings`: RLS scopes
every query to the tenant and to the calling principal, who owns what it creates - migration 0011)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import asyncpg
import msgspec

from core.errors import NotFound
from storage.repositories._rows import to_struct, to_structs

__all__ = [
    "Conversation", "MessageRole", "MessageStatus", "StoredMessage", "add_message", "collection_id_by_name",
    "create_conversation", "delete_conversation", "existing_collections", "get_conversation", "list_conversations",
    "list_messages", "recent_messages", "touch_conversation",
]

MessageRole = Literal["user", "assistant", "tool", "system"]
MessageStatus = Literal["complete", "error", "cancelled"]


class Conversation(msgspec.Struct, kw_only=True):
    id: UUID
    tenant_id: UUID
    title: str
    collection_ids: list[UUID] | None
    """The collections the agent searches; None = all of the tenant's."""
    created_at: datetime
    updated_at: datetime


class StoredMessage(msgspec.Struct, kw_only=True):
    id: UUID
    conversation_id: UUID
    role: MessageRole
    content: str
    citations: list[dict[str, Any]]
    tool_calls: list[dict[str, Any]]
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int | None
    status: MessageStatus
    error: dict[str, Any] | None
    finish_reason: str | None
    model: str | None
    created_at: datetime


_CONVERSATION = "id, tenant_id, title, collection_ids, created_at, updated_at"
_MESSAGE = ("id, conversation_id, role, content, citations, tool_calls, prompt_tokens, completion_tokens, "
            "latency_ms, status, error, finish_reason, model, created_at")


async def create_conversation(
    conn: asyncpg.Connection, tenant_id: UUID, title: str, collection_ids: list[UUID] | None
) -> Conversation:
    row = await conn.fetchrow(
        f"INSERT INTO conversations (tenant_id, title, collection_ids) VALUES ($1, $2, $3) RETURNING {_CONVERSATION}",
        tenant_id, title, collection_ids,
    )
    assert row is not None
    return to_struct(row, Conversation)


async def get_conversation(conn: asyncpg.Connection, conversation_id: UUID) -> Conversation:
    row = await conn.fetchrow(f"SELECT {_CONVERSATION} FROM conversations WHERE id = $1", conversation_id)
    if row is None:
        raise NotFound("no such conversation")
    return to_struct(row, Conversation)


async def list_conversations(
    conn: asyncpg.Connection, after: tuple[datetime, UUID] | None, limit: int
) -> list[Conversation]:
    """Newest first; keyset on (created_at DESC, id) — the order of the conversations_owner index."""
    if after is None:
        rows = await conn.fetch(
            f"SELECT {_CONVERSATION} FROM conversations ORDER BY created_at DESC, id LIMIT $1", limit)
    else:
        rows = await conn.fetch(
            f"""SELECT {_CONVERSATION} FROM conversations
                WHERE created_at < $1 OR (created_at = $1 AND id > $2)
                ORDER BY created_at DESC, id LIMIT $3""",
            after[0], after[1], limit,
        )
    return to_structs(rows, Conversation)


async def delete_conversation(conn: asyncpg.Connection, conversation_id: UUID) -> None:
    """Its messages go too (ON DELETE CASCADE)."""
    status = await conn.execute("DELETE FROM conversations WHERE id = $1", conversation_id)
    if status == "DELETE 0":
        raise NotFound("no such conversation")


async def touch_conversation(conn: asyncpg.Connection, conversation_id: UUID, title_if_empty: str) -> None:
    await conn.execute(
        """UPDATE conversations SET updated_at = now(),
               title = CASE WHEN title = '' THEN $2 ELSE title END
           WHERE id = $1""",
        conversation_id, title_if_empty,
    )


async def add_message(
    conn: asyncpg.Connection, *, tenant_id: UUID, conversation_id: UUID, role: MessageRole, content: str,
    citations: list[Any] | None = None, tool_calls: list[Any] | None = None, prompt_tokens: int = 0,
    completion_tokens: int = 0, latency_ms: int | None = None, status: MessageStatus = "complete",
    error: dict[str, Any] | None = None, finish_reason: str | None = None, model: str | None = None,
) -> StoredMessage:
    row = await conn.fetchrow(
        f"""INSERT INTO messages (tenant_id, conversation_id, role, content, citations, tool_calls, prompt_tokens,
                                  completion_tokens, latency_ms, status, error, finish_reason, model, created_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, clock_timestamp())
            RETURNING {_MESSAGE}""",
        tenant_id, conversation_id, role, content, citations or [], tool_calls or [], prompt_tokens,
        completion_tokens, latency_ms, status, error, finish_reason, model,
    )
    assert row is not None
    return to_struct(row, StoredMessage)


async def list_messages(
    conn: asyncpg.Connection, conversation_id: UUID, limit: int
) -> tuple[list[StoredMessage], bool]:
    """The latest `limit` messages in chronological order, and whether older ones exist."""
    rows = await conn.fetch(
        f"""SELECT * FROM (SELECT {_MESSAGE} FROM messages WHERE conversation_id = $1
                           ORDER BY created_at DESC, id DESC LIMIT $2) latest
            ORDER BY created_at, id""",
        conversation_id, limit + 1,
    )
    more = len(rows) > limit
    return to_structs(rows[1:] if more else rows, StoredMessage), more


async def recent_messages(conn: asyncpg.Connection, conversation_id: UUID, limit: int) -> list[StoredMessage]:
    """The history the agent sees: the latest user messages and complete answers, oldest first
    (an answer that failed or was cancelled half-way would mislead the next turn)."""
    if limit <= 0:
        return []
    rows = await conn.fetch(
        f"""SELECT * FROM (SELECT {_MESSAGE} FROM messages
                           WHERE conversation_id = $1 AND content <> ''
                             AND (role = 'user' OR (role = 'assistant' AND status = 'complete'))
                           ORDER BY created_at DESC, id DESC LIMIT $2) latest
            ORDER BY created_at, id""",
        conversation_id, limit,
    )
    return to_structs(rows, StoredMessage)


async def existing_collections(conn: asyncpg.Connection, collection_ids: list[UUID]) -> set[UUID]:
    """Which of these collection ids the current tenant has (to check a chat's scope)."""
    rows = await conn.fetch("SELECT id FROM collections WHERE id = ANY($1::uuid[])", collection_ids)
    return {r["id"] for r in rows}


async def collection_id_by_name(conn: asyncpg.Connection, name: str) -> UUID | None:
    """The current tenant's collection of that name (chat scopes given by name, e.g. a model name)."""
    found: UUID | None = await conn.fetchval("SELECT id FROM collections WHERE name = $1", name)
    return found
