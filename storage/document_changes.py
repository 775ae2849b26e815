"""Document changes pushed by Postgres: one LISTEN connection per process wakes the watchers.

Migration 0011's triggers NOTIFY `quarry_documents` at the commit of a change of a document's
status or chunk count (`<tenant id>:<document id>`) and of a statement deleting documents (the
tenant id). A watcher (a progress stream, api/documents/progress.py) registers an asyncio.Event
for its tenant and documents; a notification sets the events of that document's watchers, a
tenant-wide one those of every watcher of the tenant. Watchers re-read Postgres when woken:
the payload only says *that* something changed, row-level security still decides what they see.

Nothing here is trusted to be complete. While the connection is not subscribed (`live` False:
before the first watch, while reconnecting, or never under PgBouncer's transaction pooling,
which cannot carry LISTEN) notifications are lost, so watchers poll on their own; and every
(re)subscription or loss wakes every watcher, so what changed meanwhile is read again. A closed
connection is noticed at once; a ping every few seconds detects one that died silently.

The connection is opened on the first watch, so a process that serves no progress stream holds
none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from uuid import UUID

import asyncpg

__all__ = ["CHANNEL", "DocumentChanges"]

CHANNEL = "quarry_documents"
_log = logging.getLogger("quarry.progress")


class DocumentChanges:
    def __init__(self, connect: Callable[[], Awaitable[asyncpg.Connection]], *, enabled: bool = True,
                 ping_s: float = 5.0) -> None:
        self._connect = connect
        self.enabled = enabled
        self.ping_s = ping_s
        self._by_document: dict[UUID, set[asyncio.Event]] = {}
        self._by_tenant: dict[UUID, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self.live = False
        """Subscribed: a change of a watched document will wake its watchers."""
        self._subscribed = asyncio.Event()
        self.notifications = 0

    @classmethod
    def connecting_to(cls, database_url: str, *, enabled: bool = True) -> DocumentChanges:
        return cls(lambda: asyncpg.connect(database_url, server_settings={"application_name": "quarry-progress"}),
                   enabled=enabled)

    @contextlib.contextmanager
    def watch(self, tenant_id: UUID, document_ids: Sequence[UUID], wake: asyncio.Event) -> Iterator[None]:
        """Set `wake` whenever one of these documents (or, on deletions, any of the tenant's) changes,
        and whenever notifications may have been lost. Starts the listener on first use."""
        self.start()
        self._by_tenant.setdefault(tenant_id, set()).add(wake)
        for doc_id in document_ids:
            self._by_document.setdefault(doc_id, set()).add(wake)
        try:
            yield
        finally:
            _discard(self._by_tenant, tenant_id, wake)
            for doc_id in document_ids:
                _discard(self._by_document, doc_id, wake)

    def start(self) -> None:
        """Open the listening connection (in the background) unless it is already open."""
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._listen(), name="document-changes")

    def watchers(self) -> int:
        return sum(len(events) for events in self._by_tenant.values())

    async def wait_live(self) -> None:
        """Returns once subscribed (for tests and tools; streams never wait for it)."""
        await self._subscribed.wait()

    async def sync(self) -> None:
        """Returns once every notification committed before the call has been handed out (a
        round trip on the listening connection: Postgres sends pending notifications first)."""
        conn = self._conn
        if conn is not None and self.live:
            await conn.fetchval("SELECT 1")
            await asyncio.sleep(0)  # asyncpg hands notifications to the loop with call_soon

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.notifications += 1
        tenant, _, document = payload.partition(":")
        try:
            events = self._by_document.get(UUID(document)) if document else self._by_tenant.get(UUID(tenant))
        except ValueError:
            _log.warning("ignoring a malformed %s notification", CHANNEL)
            return
        for event in events or ():
            event.set()

    def _wake_all(self) -> None:
        for events in self._by_tenant.values():
            for event in events:
                event.set()

    async def stop(self) -> None:
        self.live = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _listen(self) -> None:
        delay = 0.2
        while True:
            conn = None
            try:
                conn = await self._connect()
                closed = asyncio.Event()  # the server ended the session (e.g. a restart): notice it at once
                conn.add_termination_listener(lambda _conn, event=closed: event.set())
                await conn.add_listener(CHANNEL, self._on_notify)
                self._conn, self.live, delay = conn, True, 0.2
                self._subscribed.set()
                self._wake_all()  # changes made before the subscription were not notified to us
                while True:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(closed.wait(), self.ping_s)
                    if closed.is_set():
                        raise ConnectionError("the listening connection was closed")
                    async with asyncio.timeout(self.ping_s):
                        await conn.fetchval("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: watchers poll on their own until we are back
                if self.live:
                    _log.warning("document change notifications lost (%s); progress streams poll until "
                                 "they are back", type(exc).__name__)
            finally:
                self.live, self._conn = False, None
                self._subscribed.clear()
                self._wake_all()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.close(timeout=1))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _discard(index: dict[UUID, set[asyncio.Event]], key: UUID, event: asyncio.Event) -> None:
    events = index.get(key)
    if events is not None:
        events.discard(event)
        if not events:
            del index[key]
