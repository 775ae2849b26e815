"""OpenAI-compatible facade: `POST /v1/chat/completions` and `GET /v1/models`, so any OpenAI SDK
client can use Quarry as a RAG backend with its Quarry API key.

The model name picks the scope: `quarry` searches all of the tenant's collections,
`quarry:<collection name>` one collection. The last message is the question, earlier user and
assistant messages are the history, system/developer messages are extra instructions.
Citations ride along as an extra `citations` field (on the response, or the last chunk).
"""

from __future__ import annotations

import time
import uuid
from typing import Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.params import JSONBody

from api import paths
from api.chat.schemas import ChatAnswer, ChatCompletionRequest, ModelCard, ModelList, OpenAIMessage
from api.chat.service import start_chat
from api.chat.session import ChatEventStream, SessionEvents, sse
from api.deps import DbPool
from api.disconnects import unless_disconnected
from core.errors import NotFound, Unprocessable
from rag.agent import ErrorEvent, TokenEvent
from storage.models import Principal
from storage.repositories import collections as collection_repo
from storage.repositories import conversations as conv_repo
from storage.tenancy import tenant_tx

AnyRequest = Request[Principal, UUID, State]

MODEL = "quarry"
_MAX_MODELS = 200
_json = msgspec.json.Encoder()
_FINISH = {"stop": "stop", "length": "length", "max_tokens": "length", "max_steps": "stop"}


class CompletionsController(Controller):
    tags = ["openai-compatible"]

    @post(paths.CHAT_COMPLETIONS, operation_id="createChatCompletion", status_code=200)
    async def create(self, data: JSONBody[ChatCompletionRequest], request: AnyRequest, pool: DbPool) -> Response[Any]:
        """OpenAI's chat completions (streamed or not), answered by the agent over the tenant's documents."""
        tenant_id = request.user.tenant_id
        scope = await _scope_of_model(pool, tenant_id, data.model)
        question, history, instructions = _conversation(data.messages)
        session = await start_chat(request.app.state, pool, tenant_id, question=question, history=history,
                                   collections=scope, instructions=instructions)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if data.stream:
            include_usage = bool(data.stream_options and data.stream_options.include_usage)
            encoder = _ChunkEncoder(completion_id, created, data.model, include_usage)
            events = SessionEvents(session, encoder, end=[sse(b"[DONE]")])
            return ChatEventStream(events)
        answer = await unless_disconnected(request.receive, session.result())
        return Response({
            "id": completion_id, "object": "chat.completion", "created": created, "model": data.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.answer},
                         "finish_reason": _FINISH.get(answer.finish_reason, "stop"), "logprobs": None}],
            "usage": msgspec.to_builtins(answer.usage),
            "citations": msgspec.to_builtins(answer.citations),
        })

    @get(paths.MODELS, operation_id="listModels")
    async def models(self, request: AnyRequest, pool: DbPool) -> ModelList:
        """The model names this tenant can use: `quarry` and `quarry:<collection>` per collection."""
        async with tenant_tx(pool, request.user.tenant_id, readonly=True) as conn:
            found = await collection_repo.list_collections(conn, None, _MAX_MODELS)
        return ModelList(data=[ModelCard(id=MODEL), *(ModelCard(id=f"{MODEL}:{c.name}") for c in found)])


async def _scope_of_model(pool: Any, tenant_id: UUID, model: str) -> list[UUID] | None:
    name, sep, collection = model.partition(":")
    if name != MODEL or (sep and not collection):
        raise _model_not_found(model)
    if not sep:
        return None
    async with tenant_tx(pool, tenant_id, readonly=True) as conn:
        found = await conv_repo.collection_id_by_name(conn, collection)
    if found is None:
        raise _model_not_found(model)
    return [found]


def _model_not_found(model: str) -> NotFound:
    message = (f"The model {model!r} does not exist: use 'quarry' (all collections) or "
               "'quarry:<collection name>' (GET /v1/models lists them).")
    return NotFound(message, error={"message": message, "type": "invalid_request_error", "param": "model",
                                    "code": "model_not_found"})


def _text(content: str | list[dict[str, Any]] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content
                   if part.get("type") in ("text", "input_text") and isinstance(part.get("text"), str))


def _conversation(messages: list[OpenAIMessage]) -> tuple[str, list[tuple[str, str]], str | None]:
    """(question, history, instructions) from OpenAI messages."""
    last = messages[-1]
    question = _text(last.content).strip()
    if last.role != "user" or not question:
        raise Unprocessable("the last message must be the user's question (role 'user', non-empty content)")
    history: list[tuple[str, str]] = []
    instructions: list[str] = []
    for m in messages[:-1]:
        text = _text(m.content).strip()
        if m.role in ("system", "developer") and text:
            instructions.append(text)
        elif m.role in ("user", "assistant") and text:
            history.append((m.role, text))
    return question, history, "\n".join(instructions) or None


class _ChunkEncoder:
    """Agent events as `chat.completion.chunk`s: tokens become content deltas; the end is a
    finish chunk (with the citations), the usage chunk if asked for, then `[DONE]`."""

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        self.base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
        self.include_usage = include_usage
        self.started = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        if not self.started:
            delta = {"role": "assistant", **delta}
            self.started = True
        body = {**self.base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
                **extra}
        return sse(_json.encode(body))

    def __call__(self, item: Any) -> list[bytes]:
        if isinstance(item, TokenEvent):
            return [self._chunk({"content": item.text})]
        if isinstance(item, ChatAnswer):
            out = [self._chunk({}, _FINISH.get(item.finish_reason, "stop"),
                               citations=msgspec.to_builtins(item.citations))]
            if self.include_usage:
                usage = {**self.base, "choices": [], "usage": msgspec.to_builtins(item.usage)}
                out.append(sse(_json.encode(usage)))
            return out
        if isinstance(item, ErrorEvent):
            error = {"error": {"message": item.message, "type": "server_error", "param": None, "code": item.code}}
            return [sse(_json.encode(error))]
        return []
