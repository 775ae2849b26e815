"""Starting a chat answer: limits, scope, history, the stored user message, then the agent.

The order keeps a rejected request cheap and leak-free: the stream slot first (Redis, 429),
then one short transaction (budget 429, conversation 404, scope 422, history, the user's
message; skipped when a one-shot chat needs none of them); any failure there releases the
slot before the error leaves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any
from uuid import UUID

import asyncpg

from api.chat.limits import StreamSlots, remaining_budget
from api.chat.session import ChatSession
from api.chat.tools import TenantToolbox
from api.chat.usage import UsageRecorder
from api.shutdown import shutdown_of
from core.errors import Unprocessable
from core.settings import Settings
from rag.agent import Agent, AgentLimits, strip_citations
from rag.llm.base import Message
from storage.repositories import conversations as conv_repo
from storage.tenancy import principal_settings, tenant_tx

__all__ = ["history_messages", "start_chat", "stream_slots"]

_SLOT_GRACE_S = 60
_TITLE_CHARS = 80


def stream_slots(state: Any, settings: Settings) -> StreamSlots:
    """The process's one StreamSlots (it batches the Redis calls of concurrent chats)."""
    slots: StreamSlots | None = getattr(state, "chat_slots", None)
    if slots is None:
        # A slot outlives any legitimate run (deadline + grace), then expires by itself.
        slots = state.chat_slots = StreamSlots(state.chat_redis, settings.chat_max_streams_per_tenant,
                                               int(settings.agent_deadline_s) + _SLOT_GRACE_S)
    return slots


def history_messages(turns: Sequence[tuple[str, str]]) -> list[Message]:
    """(role, content) pairs as LLM messages; old answers lose their [n] markers, which
    pointed at sources of runs the model cannot see."""
    out = []
    for role, content in turns:
        if role == "user":
            out.append(Message(role="user", content=content))
        elif role == "assistant":
            out.append(Message(role="assistant", content=strip_citations(content)))
    return out


async def start_chat(
    state: Any, pool: asyncpg.Pool, tenant_id: UUID, *, question: str, history: Sequence[tuple[str, str]] = (),
    collections: list[UUID] | None = None, conversation_id: UUID | None = None, instructions: str | None = None,
    owner_id: UUID | None = None,
) -> ChatSession:
    """`owner_id`: the calling principal (`storage.tenancy.principal_id`), required with a
    `conversation_id`: only the conversation's owner can read or extend it (404 for others)."""
    if conversation_id is not None and owner_id is None:
        raise ValueError("a conversation's chat needs the calling principal (owner_id)")
    settings: Settings = state.settings
    started = time.perf_counter()
    slots = stream_slots(state, settings)
    usage: UsageRecorder = state.chat_usage
    token = await slots.acquire(tenant_id)
    remaining: int | None = None
    needs_db = conversation_id is not None or bool(collections) or settings.chat_monthly_token_budget > 0
    try:
        if needs_db:  # a plain one-shot chat goes straight to the agent (no round trip before the LLM)
            remaining, scope, history = await _prepare(
                pool, tenant_id, owner_id, settings, question, history, collections, conversation_id,
                lambda month: usage.pending(tenant_id, month))
        else:
            scope = None
    except BaseException:
        await slots.release(tenant_id, token)
        raise
    max_tokens = settings.agent_max_tokens if remaining is None else min(settings.agent_max_tokens, remaining)
    limits = AgentLimits(max_steps=settings.agent_max_steps, max_tokens=max_tokens,
                         max_answer_tokens=settings.agent_max_answer_tokens, deadline_s=settings.agent_deadline_s)
    toolbox = TenantToolbox(pool, tenant_id, state.embedder, scope,
                            statement_timeout_ms=settings.search_statement_timeout_ms)
    agent = Agent(state.llm, toolbox, limits, instructions=instructions)
    run = agent.start(question, history_messages(history))
    return ChatSession(run=run, pool=pool, tenant_id=tenant_id, slots=slots, slot_token=token, usage=usage,
                       conversation_id=conversation_id, owner_id=owner_id, started=started, model=state.llm.model,
                       shutdown=shutdown_of(state)).start()


async def _prepare(
    pool: asyncpg.Pool, tenant_id: UUID, owner_id: UUID | None, settings: Settings, question: str,
    history: Sequence[tuple[str, str]], collections: list[UUID] | None, conversation_id: UUID | None,
    pending: Callable[[date], int],
) -> tuple[int | None, list[UUID] | None, Sequence[tuple[str, str]]]:
    """One transaction: the budget (429), the scope (422), the conversation (404), its history,
    the user's message. Returns (tokens left this month, scope, history)."""
    as_owner = principal_settings(owner_id) if owner_id is not None else None
    async with tenant_tx(pool, tenant_id, local_settings=as_owner) as conn:
        remaining = await remaining_budget(conn, settings.chat_monthly_token_budget, pending)
        if collections:
            missing = set(collections) - await conv_repo.existing_collections(conn, collections)
            if missing:
                raise Unprocessable("unknown collections: " + ", ".join(sorted(str(m) for m in missing)))
        scope = collections
        if conversation_id is not None:
            conversation = await conv_repo.get_conversation(conn, conversation_id)
            if scope is None:
                scope = conversation.collection_ids
            stored = await conv_repo.recent_messages(conn, conversation_id, settings.agent_history_messages)
            history = [(m.role, m.content) for m in stored]
            await conv_repo.add_message(conn, tenant_id=tenant_id, conversation_id=conversation_id, role="user",
                                        content=question)
            await conv_repo.touch_conversation(conn, conversation_id, question[:_TITLE_CHARS])
    return remaining, scope, history
