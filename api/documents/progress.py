"""Document progress as Server-Sent Events: bounded in number and lifetime, pushed not polled.

- **Per-tenant cap**: a stream holds a place in a per-tenant `api.chat.limits.StreamSlots`
  semaphore (Redis, shared by every API worker; the chat streams' mechanism with its own key):
  at most `QUARRY_EVENT_STREAMS_PER_TENANT`, beyond that 429 + Retry-After. The place's lease
  outlives the longest stream, so a worker that crashed frees it by itself.
- **Lifetime**: after `QUARRY_EVENT_STREAM_MAX_S` the stream ends with a retryable `error`
  (`stream_expired`, with `retry:`); EventSource reconnects and resumes from the current state,
  as after a shutdown's `shutting_down`.
- **Pushed**: the stream reads Postgres when a document it watches changes (NOTIFY from
  migration 0011, one LISTEN connection per process: `storage.document_changes`), plus a safety
  read every `SAFETY_POLL_S` in case a notification was lost; every `FALLBACK_POLL_S` while the
  process is not subscribed (reconnecting, or PgBouncer, which cannot carry LISTEN).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any
from uuid import UUID

import msgspec

from api.chat.limits import StreamSlots
from api.chat.session import EventStream, sse
from api.shutdown import SHUTTING_DOWN, SHUTTING_DOWN_MESSAGE, Shutdown, shutdown_of
from core.settings import Settings
from storage.document_changes import DocumentChanges
from storage.repositories import documents
from storage.tenancy import tenant_tx

__all__ = ["FALLBACK_POLL_S", "SAFETY_POLL_S", "STREAM_EXPIRED", "ProgressEvents", "event_slots", "progress_stream"]

log = logging.getLogger("quarry.progress")

SAFETY_POLL_S = 15.0
"""A read now and then even without a notification: one lost would otherwise stall the stream."""
FALLBACK_POLL_S = 2.0
"""The read interval while this process receives no notifications."""
HEARTBEAT_S = 15.0
STREAM_EXPIRED = "stream_expired"
_SLOT_GRACE_S = 60
_RETRY_MS = 1000  # the final `error` asks EventSource to reconnect after 1 s
_TERMINAL = {"ready", "failed", "missing"}
_KEEP_ALIVE = b": keep-alive\n\n"
_json = msgspec.json.Encoder()


def event_slots(state: Any, settings: Settings) -> StreamSlots:
    """The process's one StreamSlots for progress streams (it batches their Redis calls)."""
    slots: StreamSlots | None = getattr(state, "event_slots", None)
    if slots is None:
        slots = state.event_slots = StreamSlots(
            state.chat_redis, settings.event_streams_per_tenant, int(settings.event_stream_max_s) + _SLOT_GRACE_S,
            kind="events", busy="document progress streams open")
    return slots


async def progress_stream(state: Any, pool: Any, tenant_id: UUID, document_ids: list[UUID]) -> EventStream:
    """The response: a place is taken first (429 when the tenant has none left, 503 without Redis)."""
    settings: Settings = state.settings
    slots = event_slots(state, settings)
    token = await slots.acquire(tenant_id)
    events = ProgressEvents(pool, tenant_id, document_ids, changes=getattr(state, "document_changes", None),
                            shutdown=shutdown_of(state), max_s=settings.event_stream_max_s,
                            release=lambda: slots.release(tenant_id, token))
    return EventStream(events)


def _final_error(code: str, message: str) -> bytes:
    data = _json.encode({"code": code, "message": message, "retryable": True})
    return sse(data, "error")[:-1] + f"retry: {_RETRY_MS}\n\n".encode()


_SHUTTING_DOWN_EVENT = _final_error(SHUTTING_DOWN, SHUTTING_DOWN_MESSAGE)


class ProgressEvents:
    """The body of one progress stream: `status` for each change, then `done` when every document
    is final (`ready`, `failed`, or `missing`: ids the tenant cannot see, as RLS hides other
    tenants' rows); or a final retryable `error` (shutdown, lifetime). `aclose` (always called
    by the response, also on a hang-up) stops watching and gives the tenant's place back."""

    def __init__(self, pool: Any, tenant_id: UUID, document_ids: list[UUID], *, changes: DocumentChanges | None,
                 shutdown: Shutdown | None, max_s: float,
                 release: Callable[[], Awaitable[None]] | None = None) -> None:
        self.pool = pool
        self.tenant_id = tenant_id
        self.document_ids = document_ids
        self.changes = changes
        self.shutdown = shutdown
        self.max_s = max_s
        self.reads = 0  # Postgres reads so far (observable: no fast poll)
        self._release = release
        self._events = self._run()

    def __aiter__(self) -> ProgressEvents:
        return self

    async def __anext__(self) -> bytes:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        release, self._release = self._release, None
        try:
            await self._events.aclose()
        finally:
            if release is not None:
                try:
                    await release()
                except Exception:  # the place expires by itself (its lease)
                    log.warning("could not release a progress stream's place; it will expire by itself")

    async def _read(self) -> dict[UUID, tuple[str, int, str | None]]:
        self.reads += 1
        async with tenant_tx(self.pool, self.tenant_id, readonly=True) as conn:
            found = {d.id: d for d in await documents.get_documents(conn, self.document_ids)}
        return {i: (d.status, d.chunk_count, d.error) if (d := found.get(i)) else ("missing", 0, None)
                for i in self.document_ids}

    async def _run(self) -> AsyncGenerator[bytes, None]:
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + self.max_s
        wake = asyncio.Event()
        unsubscribe = self.shutdown.on_begin(wake.set) if self.shutdown is not None else None
        watching = (self.changes.watch(self.tenant_id, self.document_ids, wake) if self.changes is not None
                    else contextlib.nullcontext())
        last: dict[UUID, tuple[str, int]] = {}
        try:
            with watching:
                beat_at = loop.time() + HEARTBEAT_S
                while True:
                    wake.clear()  # before the read: a change committed after it wakes us again
                    read_at = loop.time()
                    out = []
                    for doc_id, (status, chunks, error) in (await self._read()).items():
                        if last.get(doc_id) != (status, chunks):
                            last[doc_id] = (status, chunks)
                            out.append(sse(_json.encode({"document_id": str(doc_id), "status": status,
                                                         "chunk_count": chunks, "error": error}), "status"))
                    if all(s in _TERMINAL for s, _ in last.values()):
                        counts = {s: sum(1 for v in last.values() if v[0] == s) for s in ("ready", "failed", "missing")}
                        yield b"".join([*out, sse(_json.encode(counts), "done")])
                        return
                    if out:
                        yield b"".join(out)
                        beat_at = loop.time() + HEARTBEAT_S
                    while True:  # until a notification, the next safety read, the end
                        if self.shutdown is not None and self.shutdown.started:
                            yield _SHUTTING_DOWN_EVENT
                            return
                        now = loop.time()
                        if now >= ends_at:
                            yield _final_error(STREAM_EXPIRED, f"this stream reached its maximum lifetime of "
                                               f"{self.max_s:g} s; reconnect to follow the documents further")
                            return
                        live = self.changes is not None and self.changes.live
                        read_due = read_at + (SAFETY_POLL_S if live else FALLBACK_POLL_S)
                        if wake.is_set() or now >= read_due:
                            break
                        if now >= beat_at:  # keeps proxies from closing a quiet stream
                            yield _KEEP_ALIVE
                            beat_at = now + HEARTBEAT_S
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(wake.wait(), min(read_due, ends_at, beat_at) - now)
        finally:
            if unsubscribe is not None:
                unsubscribe()
