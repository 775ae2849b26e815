"""One chat answer in flight: the agent runs in its own task and feeds a queue that the
response (SSE, or one JSON body) drains.

Why a task: the run must end exactly once, whatever the client does. When the client hangs
up, closing the response cancels the task at once — the LLM request is closed mid-stream,
no DB connection is held (the tools and the final write each open their own short
`tenant_tx`) — and the task still stores what happened (status `cancelled`, the tokens spent)
and releases the tenant's stream slot in its `finally`. When nobody reads the response at
all, the task simply runs to its end and does the same. When the worker begins shutting down
(`api.shutdown`), an open stream stops its run the same way and ends with an `error` event
`shutting_down` (retryable), before the kill timeout, so the client can retry elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from litestar.response import Stream
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import Receive, Send

from api.chat.limits import StreamSlots
from api.chat.schemas import ChatAnswer
from api.chat.usage import UsageRecorder
from api.shutdown import SHUTTING_DOWN, SHUTTING_DOWN_MESSAGE, Shutdown
from core.errors import Unavailable
from rag.agent import AgentEvent, AgentRun, DoneEvent, ErrorEvent
from storage.repositories import conversations as conv_repo
from storage.tenancy import principal_settings, tenant_tx

__all__ = ["END", "ChatEventStream", "ChatSession", "EventStream", "SessionEvents", "sse"]

log = logging.getLogger("quarry.chat")

END = object()
"""The last item of a session's queue."""
_KEEP_ALIVE = object()
_SHUTDOWN = object()  # the worker is shutting down: stop the run, end the stream with SHUTTING_DOWN_EVENT
SHUTTING_DOWN_EVENT = ErrorEvent(code=SHUTTING_DOWN, message=SHUTTING_DOWN_MESSAGE, retryable=True)
Item = Any  # AgentEvent | ChatAnswer | END
_HEARTBEAT_S = 15.0
_CLOSE_WAIT_S = 10.0
_running: set[asyncio.Task[None]] = set()  # strong references: a task must not be collected mid-run


class ChatSession:
    def __init__(
        self, *, run: AgentRun, pool: asyncpg.Pool, tenant_id: UUID, slots: StreamSlots, slot_token: str,
        usage: UsageRecorder, conversation_id: UUID | None, started: float, model: str,
        shutdown: Shutdown | None = None, owner_id: UUID | None = None,
    ) -> None:
        self.run = run
        self.pool = pool
        self.tenant_id = tenant_id
        self.slots = slots
        self.slot_token: str | None = slot_token
        self.usage = usage
        self.conversation_id = conversation_id
        self.owner_id = owner_id  # the conversation's owner: the answer is stored as that principal
        self.started = started
        self.model = model
        self.shutdown = shutdown
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self.outcome: ChatAnswer | None = None
        self.status = "pending"
        self.task: asyncio.Task[None] | None = None

    def start(self) -> ChatSession:
        self.task = asyncio.create_task(self._main(), name="quarry-chat")
        _running.add(self.task)
        self.task.add_done_callback(_running.discard)
        return self

    async def result(self) -> ChatAnswer:
        """Wait for the end (the non-streaming answer). Cancelling the caller cancels the run."""
        assert self.task is not None
        await self.task
        if self.run.error is not None:
            error = Unavailable(f"the agent could not answer: {self.run.error.message}", code=self.run.error.code)
            if self.run.error.retryable:
                error.headers["Retry-After"] = "1"
            raise error
        assert self.outcome is not None
        return self.outcome

    def interrupt(self) -> bool:
        """Stop the run if it is still running (it is stored as `cancelled`, like a hang-up, and
        END follows); False when it has already ended (its outcome and END are on their way)."""
        task = self.task
        if task is None or task.done() or self.status != "pending":
            return False
        # Soon, not now: a task cancelled before its first step would skip `_main` and its cleanup.
        asyncio.get_running_loop().call_soon(task.cancel)
        return True

    async def close(self) -> None:
        """The client is gone (or the response ended): stop the run if it still goes."""
        task = self.task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=_CLOSE_WAIT_S)

    # --- the task ------------------------------------------------------------------------------

    async def _main(self) -> None:
        status = "error"
        try:
            await self.run.execute(self._on_event)
            status = "error" if self.run.error is not None else "complete"
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        except Exception:
            log.exception("the chat agent failed unexpectedly")
            self.run.error = ErrorEvent(code="internal", message="the agent failed unexpectedly; it has been logged",
                                        retryable=False)
            self.queue.put_nowait(self.run.error)
        finally:
            self.status = status
            try:
                await self._store(status)
            finally:
                await self._release()
                self.queue.put_nowait(END)

    def _on_event(self, event: AgentEvent) -> None:
        if not isinstance(event, DoneEvent):  # `done` goes out after the message is stored (it has its id)
            self.queue.put_nowait(event)

    async def _store(self, status: str) -> None:
        run = self.run
        latency_ms = int((time.perf_counter() - self.started) * 1000)
        answer = run.answer if status == "complete" else run.partial
        message_id: UUID | None = None
        if run.usage.total_tokens:
            self.usage.add(self.tenant_id, run.usage.prompt_tokens, run.usage.completion_tokens)
        if self.conversation_id is not None:
            as_owner = principal_settings(self.owner_id) if self.owner_id is not None else None
            try:
                async with tenant_tx(self.pool, self.tenant_id, local_settings=as_owner) as conn:
                    stored = await conv_repo.add_message(
                        conn, tenant_id=self.tenant_id, conversation_id=self.conversation_id, role="assistant",
                        content=answer, citations=[msgspec.to_builtins(c) for c in run.citations],
                        tool_calls=[msgspec.to_builtins(c) for c in run.tool_calls],
                        prompt_tokens=run.usage.prompt_tokens, completion_tokens=run.usage.completion_tokens,
                        latency_ms=latency_ms, status=status,  # type: ignore[arg-type]
                        error=msgspec.to_builtins(run.error) if run.error else None,
                        finish_reason=run.finish_reason if status == "complete" else status, model=self.model,
                    )
                    message_id = stored.id
                    await conv_repo.touch_conversation(conn, self.conversation_id, "")
            except Exception:  # the client still gets its answer; the failure is logged
                log.exception("could not store the chat message (status %s)", status)
        self.outcome = ChatAnswer(
            conversation_id=self.conversation_id, message_id=message_id, answer=answer, citations=run.citations,
            tool_calls=run.tool_calls, finish_reason=run.finish_reason, steps=run.steps, usage=run.usage_out(),
            latency_ms=latency_ms, model=self.model,
        )
        if status == "complete":
            self.queue.put_nowait(self.outcome)

    async def _release(self) -> None:
        token, self.slot_token = self.slot_token, None
        if token is None:
            return
        try:
            await self.slots.release(self.tenant_id, token)
        except Exception:  # the slot expires by itself (StreamSlots TTL)
            log.warning("could not release a chat stream slot; it will expire by itself")


Encoder = Callable[[Item], Sequence[bytes]]
"""Turns a queue item into server-sent events, already encoded (see `sse`)."""

_KEEP_ALIVE_EVENT = b": keep-alive\n\n"


def sse(data: bytes, event: str | None = None) -> bytes:
    """One server-sent event. `data` is compact JSON (no line breaks), so one `data:` line."""
    return (b"event: " + event.encode() + b"\ndata: " if event else b"data: ") + data + b"\n\n"


class SessionEvents:
    """The response body: the session's queue, encoded; keep-alive comments while it is quiet."""

    def __init__(self, session: ChatSession, encode: Encoder, end: Sequence[bytes] = ()) -> None:
        self.session = session
        self.encode = encode
        self.end = list(end)
        self._pending: list[bytes] = []
        self._ended = False
        self._sent_since_beat = False
        self._beat: asyncio.TimerHandle | None = None
        self._started = False
        self._unsubscribe: Callable[[], None] | None = None
        self._cut_short = False  # stopped by the shutdown: the stream ends with SHUTTING_DOWN_EVENT

    def __aiter__(self) -> SessionEvents:
        return self

    async def __anext__(self) -> bytes:
        if not self._started:
            self._start()
        queue = self.session.queue
        while not self._pending:
            if self._ended:
                raise StopAsyncIteration
            self._take(await queue.get())
            while not queue.empty() and not self._ended:
                self._take(queue.get_nowait())
        self._sent_since_beat = True
        # Everything already queued leaves in one write (tokens that arrived together).
        chunk = b"".join(self._pending)
        self._pending.clear()
        return chunk

    def _start(self) -> None:
        self._started = True
        self._beat = asyncio.get_running_loop().call_later(_HEARTBEAT_S, self._heartbeat)
        shutdown = self.session.shutdown
        if shutdown is not None:  # registered while the body is sent: `aclose` unregisters it
            queue = self.session.queue
            self._unsubscribe = shutdown.on_begin(lambda: queue.put_nowait(_SHUTDOWN))

    def _take(self, item: Item) -> None:
        if item is END:
            self._ended = True
            if self._cut_short and self.session.status == "cancelled":  # not if it finished meanwhile
                self._pending.extend(self.encode(SHUTTING_DOWN_EVENT))
            self._pending.extend(self.end)
        elif item is _SHUTDOWN:
            # The run stops and stores what it has (as on a hang-up); its END closes the stream.
            # A run that has already ended finishes normally: its `done` or `error` is on the way.
            self._cut_short = self.session.interrupt() or self._cut_short
        elif item is _KEEP_ALIVE:
            self._pending.append(_KEEP_ALIVE_EVENT)
        else:
            self._pending.extend(self.encode(item))

    def _heartbeat(self) -> None:
        """Every `_HEARTBEAT_S` without an event, a comment keeps proxies from closing the stream
        (one timer per stream, not one per event)."""
        if not self._sent_since_beat and not self._ended:
            self.session.queue.put_nowait(_KEEP_ALIVE)
        self._sent_since_beat = False
        self._beat = None if self._ended else asyncio.get_running_loop().call_later(_HEARTBEAT_S, self._heartbeat)

    async def aclose(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None
        self._ended = True
        await self.session.close()


class _ClosingStream(ASGIStreamingResponse):
    """Closes the events (a chat's session, a progress stream's place) whatever ends the body: the
    last event, or the client hanging up (Litestar then cancels the sending task, which may be
    parked anywhere, e.g. in `send`, where a plain async generator would not see it)."""

    __slots__ = ()

    async def send_body(self, send: Send, receive: Receive) -> None:
        try:
            await super().send_body(send, receive)
        finally:
            close = getattr(self.iterator, "aclose", None)
            if close is not None:
                await close()


class EventStream(Stream):
    """`text/event-stream` of already encoded events (a chat session's, or a document progress
    stream's), closed by `aclose` at the end. Events are encoded here rather than by Litestar's
    ServerSentEvent, which starts every response with a hop to a worker thread."""

    def __init__(self, events: AsyncIterator[bytes]) -> None:
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        response = super().to_asgi_response(*args, **kwargs)
        # Same slots, one overridden method: swapping the class keeps Litestar's own assembly
        # of headers, cookies and encoding.
        assert type(response) is ASGIStreamingResponse
        response.__class__ = _ClosingStream
        return response


ChatEventStream = EventStream
