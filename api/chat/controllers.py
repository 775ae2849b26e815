"""Conversations (create / list / get / delete), their messages, and one-shot chat.

`stream: true` answers with Server-Sent Events: `step`, `tool_call`, `tool_result`, `token`,
`citation`, then `done` (the stored message, usage, latency) or `error`; `stream: false`
answers with the same `done` payload as one JSON body. Either way a client that hangs up
cancels the agent and its LLM call at once.

A conversation belongs to the principal that created it (the key's user, else the key):
row-level security hides it from every other key of the tenant, which gets 404 (migration 0011).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody, QueryParameter

from api import paths
from api.auth import require_role
from api.chat.schemas import (
    ChatAnswer,
    ConversationPage,
    ConversationWithMessages,
    CreateConversation,
    OneShotChat,
    SendMessage,
)
from api.chat.service import start_chat
from api.chat.session import ChatEventStream, ChatSession, SessionEvents, sse
from api.deps import DbPool, ReadPool
from api.disconnects import unless_disconnected
from api.pagination import decode_cursor, encode_cursor
from core.errors import BadRequest, Unprocessable
from storage.models import Principal
from storage.repositories import conversations as conv_repo
from storage.repositories.conversations import Conversation
from storage.tenancy import principal_id, principal_settings, tenant_tx

AnyRequest = Request[Principal, UUID, State]
Limit = Annotated[int, QueryParameter(ge=1, le=200, description="page size")]
Cursor = Annotated[str | None, QueryParameter(description="next_cursor of the previous page")]
MessagesLimit = Annotated[int, QueryParameter(ge=1, le=1000, description="how many of the latest messages")]

_json = msgspec.json.Encoder()


def native_events(item: Any) -> list[bytes]:
    """Agent events as SSE: the event name is the `type`; `done` carries the stored answer."""
    event = "done" if isinstance(item, ChatAnswer) else type(item).__struct_config__.tag
    return [sse(_json.encode(item), str(event))]


async def respond(request: AnyRequest, session: ChatSession, stream: bool) -> Response[Any]:
    if stream:
        return ChatEventStream(SessionEvents(session, native_events))
    return Response(await unless_disconnected(request.receive, session.result()))


class ConversationController(Controller):
    tags = ["chat"]

    @post(paths.CONVERSATIONS, operation_id="createConversation")
    async def create_conversation(
        self, data: JSONBody[CreateConversation], request: AnyRequest, pool: DbPool
    ) -> Conversation:
        """Start a conversation, optionally scoped to some collections."""
        tenant_id = request.user.tenant_id
        async with tenant_tx(pool, tenant_id, local_settings=_as_caller(request)) as conn:
            if data.collections:
                missing = set(data.collections) - await conv_repo.existing_collections(conn, data.collections)
                if missing:
                    raise Unprocessable("unknown collections: " + ", ".join(sorted(str(m) for m in missing)))
            return await conv_repo.create_conversation(conn, tenant_id, data.title, data.collections)

    @get(paths.CONVERSATIONS, operation_id="listConversations")
    async def list_conversations(
        self, request: AnyRequest, read_pool: ReadPool, limit: Limit = 50, cursor: Cursor = None
    ) -> ConversationPage:
        """Conversations, newest first (keyset pagination)."""
        after = _decode_cursor(cursor) if cursor else None
        async with tenant_tx(read_pool, request.user.tenant_id, readonly=True,
                             local_settings=_as_caller(request)) as conn:
            items = await conv_repo.list_conversations(conn, after, limit + 1)
        more = len(items) > limit
        items = items[:limit]
        next_cursor = encode_cursor([items[-1].created_at.isoformat(), str(items[-1].id)]) if more else None
        return ConversationPage(items=items, next_cursor=next_cursor)

    @get(paths.CONVERSATION, operation_id="getConversation")
    async def get_conversation(
        self, conversation_id: FromPath[UUID], request: AnyRequest, pool: DbPool, messages_limit: MessagesLimit = 200
    ) -> ConversationWithMessages:
        """A conversation with its latest messages (citations, tool calls, tokens, latency)."""
        async with tenant_tx(pool, request.user.tenant_id, readonly=True, local_settings=_as_caller(request)) as conn:
            conversation = await conv_repo.get_conversation(conn, conversation_id)
            messages, more = await conv_repo.list_messages(conn, conversation_id, messages_limit)
        return ConversationWithMessages(
            id=conversation.id, title=conversation.title, collection_ids=conversation.collection_ids,
            created_at=conversation.created_at, updated_at=conversation.updated_at, messages=messages, has_more=more,
        )

    @delete(paths.CONVERSATION, operation_id="deleteConversation", guards=[require_role("member")])
    async def delete_conversation(self, conversation_id: FromPath[UUID], request: AnyRequest, pool: DbPool) -> None:
        """Delete a conversation and its messages."""
        async with tenant_tx(pool, request.user.tenant_id, local_settings=_as_caller(request)) as conn:
            await conv_repo.delete_conversation(conn, conversation_id)

    @post(paths.CONVERSATION_MESSAGES, operation_id="sendMessage", status_code=200)
    async def send_message(
        self, conversation_id: FromPath[UUID], data: JSONBody[SendMessage], request: AnyRequest, pool: DbPool
    ) -> Response[ChatAnswer]:
        """Ask the agent in a conversation; earlier turns shape the answer (follow-up questions)."""
        question = _question(data.content)
        session = await start_chat(request.app.state, pool, request.user.tenant_id, question=question,
                                   collections=data.collections, conversation_id=conversation_id,
                                   owner_id=principal_id(request.user))
        return await respond(request, session, data.stream)


class ChatController(Controller):
    tags = ["chat"]

    @post(paths.CHAT, operation_id="chat", status_code=200)
    async def chat(self, data: JSONBody[OneShotChat], request: AnyRequest, pool: DbPool) -> Response[ChatAnswer]:
        """One-shot chat: nothing is stored (pass earlier turns in `history` for follow-ups)."""
        question = _question(data.message)
        history = [(m.role, m.content) for m in data.history]
        session = await start_chat(request.app.state, pool, request.user.tenant_id, question=question,
                                   history=history, collections=data.collections)
        return await respond(request, session, data.stream)


def _as_caller(request: AnyRequest) -> dict[str, str]:
    """Conversations are their creator's: row-level security shows the caller only its own
    (another key of the tenant gets 404)."""
    return principal_settings(principal_id(request.user))


def _question(text: str) -> str:
    question = text.strip()
    if not question:
        raise Unprocessable("the message is empty")
    return question


def _decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    values = decode_cursor(cursor)
    try:
        if len(values) != 2:
            raise ValueError
        return datetime.fromisoformat(values[0]), UUID(values[1])
    except (ValueError, TypeError):
        raise BadRequest("invalid cursor") from None
