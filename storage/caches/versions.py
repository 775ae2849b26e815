"""Collection versions for the search-result cache's keys, kept in memory and fed by NOTIFY.

A cached search is keyed on the versions of the collections it searched. Reading them from
Postgres cost one round trip per search - the most expensive part of a cache hit. Instead,
each API process LISTENs on `quarry_collections`: migration 0009's trigger notifies the
tenant's id at the commit of any change to its collections (a content change bumps a version;
an embedder switch, a new or deleted collection). The map keeps each tenant's versions per
search scope until such a notification drops them; the next search of that tenant reads them
again (one round trip) and keeps them.

Consistency: a change reaches this map when its notification is processed - normally well
under a millisecond after the commit, before the writer's client can even see the commit. A
search in that window may still be served from the entry cached just before the change.
Anything that could make the map miss a notification makes it stop answering instead: while
the listening connection is down (and until it has re-subscribed) every lookup reads Postgres,
and on reconnect the map starts empty. A ping every few seconds detects a connection that
died silently. A read that overlaps a notification for its tenant is not kept (it may have
seen the state before the change).

Not used behind PgBouncer in transaction mode (LISTEN needs a session) nor for searches read
from a replica (versions and results must come from the same server): those read the versions
on every search, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from uuid import UUID

import asyncpg

from storage.pooling import run_read

__all__ = ["CHANNEL", "VersionMap", "read_versions"]

CHANNEL = "quarry_collections"
_log = logging.getLogger("quarry.cache")

Scope = tuple[UUID, ...] | None  # None: every collection of the tenant


async def read_versions(pool: Any, tenant_id: UUID, collection_ids: Sequence[UUID] | None) -> str:
    """The versions of the collections in scope, from Postgres (row-level security applies)."""
    ids = list(collection_ids) if collection_ids is not None else None
    return str(await run_read(
        pool, lambda conn: conn.fetchval("SELECT quarry_collection_versions($1, $2)", tenant_id, ids)))


class VersionMap:
    def __init__(self, connect: Callable[[], Awaitable[asyncpg.Connection]], *, max_tenants: int = 10_000,
                 max_scopes_per_tenant: int = 64, ping_s: float = 5.0) -> None:
        self._connect = connect
        self.max_tenants = max_tenants
        self.max_scopes = max_scopes_per_tenant
        self.ping_s = ping_s
        self._tenants: OrderedDict[UUID, dict[Scope, str]] = OrderedDict()
        # Notification counter: a read keeps its result only if no notification for its tenant
        # (nor a reconnect) came while it ran.
        self._epoch = 0
        self._changed_at: dict[UUID, int] = {}
        self._reset_at = 0
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self.live = False  # subscribed: the map may answer

    async def versions(self, pool: Any, tenant_id: UUID, collection_ids: Sequence[UUID] | None) -> str:
        scope: Scope = tuple(sorted(collection_ids)) if collection_ids is not None else None
        if self.live:
            known = self._tenants.get(tenant_id)
            if known is not None and (found := known.get(scope)) is not None:
                return found
        started = self._epoch
        value = await read_versions(pool, tenant_id, collection_ids)
        if self.live and self._reset_at <= started and self._changed_at.get(tenant_id, 0) <= started:
            self._keep(tenant_id, scope, value)
        return value

    def _keep(self, tenant_id: UUID, scope: Scope, value: str) -> None:
        known = self._tenants.get(tenant_id)
        if known is None:
            known = self._tenants[tenant_id] = {}
            while len(self._tenants) > self.max_tenants:
                self._tenants.popitem(last=False)
        else:
            self._tenants.move_to_end(tenant_id)
        if len(known) >= self.max_scopes:
            known.clear()
        known[scope] = value

    def changed(self, tenant_id: UUID) -> None:
        self._epoch += 1
        self._changed_at[tenant_id] = self._epoch
        self._tenants.pop(tenant_id, None)

    def _reset(self) -> None:
        self._epoch += 1
        self._reset_at = self._epoch
        self._changed_at.clear()  # the reset covers every tenant
        self._tenants.clear()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            self.changed(UUID(payload))
        except ValueError:
            _log.warning("ignoring a malformed %s notification", CHANNEL)

    # --- the listening connection -----------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="collection-versions")

    async def stop(self) -> None:
        self.live = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def sync(self) -> None:
        """Returns once every notification committed before the call has been applied (a
        round trip on the listening connection: Postgres sends pending notifications before
        it answers). For tests and tools; searches never wait for it."""
        conn = self._conn
        if conn is None or not self.live:
            return
        await conn.fetchval("SELECT 1")
        await asyncio.sleep(0)  # asyncpg hands notifications to the loop with call_soon

    async def _listen(self) -> None:
        delay = 0.2
        while True:
            conn = None
            try:
                conn = await self._connect()
                await conn.add_listener(CHANNEL, self._on_notify)
                self._reset()  # whatever was kept before may have missed notifications
                self._conn, self.live, delay = conn, True, 0.2
                while True:
                    await asyncio.sleep(self.ping_s)
                    async with asyncio.timeout(self.ping_s):
                        await conn.fetchval("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: stop answering, reconnect
                if self.live:
                    _log.warning("collection version notifications lost (%s); reading versions from "
                                 "Postgres until they are back", type(exc).__name__)
            finally:
                self.live, self._conn = False, None
                self._reset()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.close(timeout=1))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
