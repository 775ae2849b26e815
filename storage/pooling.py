"""The serving side of the Postgres pool: bounded waits, pool metrics, one retry for reads.

- `QuarryPool.acquire()` never waits longer than the acquire timeout: when every connection
  is busy (or Postgres cannot be reached) it raises `Unavailable` (503 + Retry-After) instead
  of letting requests queue without bound. Every `pool.acquire()` in the code base, and
  `tenant_tx`, go through it, so no call site has to remember a timeout.
- It reports the pool gauges (size, in use, waiting) to `/metrics`: once a second and at each
  scrape (`sample_all_pools`), not on every acquire and release - in multi-process mode each
  gauge write is a locked mmap update, and six of them per request were ~10 % of a cached
  search's CPU.
- `run_read` / `run_tenant_read` run an idempotent read and retry it once on a fresh
  connection when the first one was dropped (server restart, PgBouncer or a proxy closing
  idle connections, failover): the second failure is a 503.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar
from uuid import UUID

import asyncpg

from core.errors import Unavailable
from core.metrics import DB_POOL_IN_USE, DB_POOL_SIZE, DB_POOL_TIMEOUTS, DB_POOL_WAITING
from storage.tenancy import tenant_tx

__all__ = ["CONNECTION_LOST", "DatabaseUnreachable", "QuarryPool", "run_read", "run_tenant_read",
           "sample_all_pools"]

T = TypeVar("T")

# A connection that died under us: retrying a read on another one is safe.
CONNECTION_LOST: tuple[type[BaseException], ...] = (
    asyncpg.ConnectionDoesNotExistError, asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError,
    ConnectionResetError, BrokenPipeError,
)
# asyncpg detaches a pooled connection as soon as it notices the server closed it; using it
# afterwards raises an InterfaceError with one of these messages (same meaning: it dropped).
_DETACHED = ("connection has been released back to the pool", "connection is closed")


def _lost(exc: BaseException) -> bool:
    if isinstance(exc, CONNECTION_LOST):
        return True
    return isinstance(exc, asyncpg.InterfaceError) and any(m in str(exc) for m in _DETACHED)


_CANNOT_CONNECT: tuple[type[BaseException], ...] = (
    OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError,
)


class DatabaseUnreachable(Unavailable):
    """The server could not be reached at all (not merely busy): a read routed to a replica
    falls back to the primary on it (storage.replicas)."""


def _unavailable(detail: str, retry_after_s: int, kind: type[Unavailable] = Unavailable) -> Unavailable:
    exc = kind(detail)
    exc.headers["Retry-After"] = str(retry_after_s)
    return exc


class QuarryPool(asyncpg.Pool):  # type: ignore[misc]  # asyncpg ships no type information
    """An asyncpg pool whose acquisitions time out (→ 503) and report metrics."""

    def __init__(self, *args: Any, acquire_timeout_s: float, metrics_name: str = "primary", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acquire_timeout_s = acquire_timeout_s
        self.metrics_name = metrics_name
        self.waiting = 0
        self.in_use = 0
        self._report: asyncio.TimerHandle | None = None
        _LIVE_POOLS.add(self)

    async def _acquire(self, timeout: float | None) -> Any:  # noqa: ASYNC109 - asyncpg's signature
        if self._report is None:
            self._schedule_report()
        self.waiting += 1
        try:
            proxy = await super()._acquire(self.acquire_timeout_s if timeout is None else timeout)
        except TimeoutError:
            DB_POOL_TIMEOUTS.labels(self.metrics_name).inc()
            raise _unavailable("all database connections are busy; try again shortly", 1) from None
        except _CANNOT_CONNECT as exc:
            raise _unavailable("the database is unavailable; try again shortly", 2, DatabaseUnreachable) from exc
        finally:
            self.waiting -= 1
        self.in_use += 1
        return proxy

    async def release(self, connection: Any, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        try:
            await super().release(connection, timeout=timeout)
        finally:
            self.in_use -= 1

    def sample(self) -> None:
        """Write the gauges: connections open (idle or not), checked out, and waited for."""
        DB_POOL_SIZE.labels(self.metrics_name).set(self.get_size())
        DB_POOL_IN_USE.labels(self.metrics_name).set(self.in_use)
        DB_POOL_WAITING.labels(self.metrics_name).set(self.waiting)

    def _schedule_report(self) -> None:
        self._report = asyncio.get_running_loop().call_later(REPORT_INTERVAL_S, self._report_tick)

    def _report_tick(self) -> None:
        if self._closed:
            return
        self.sample()
        self._schedule_report()

    async def close(self) -> None:
        if self._report is not None:
            self._report.cancel()
        await super().close()
        for gauge in (DB_POOL_SIZE, DB_POOL_IN_USE, DB_POOL_WAITING):
            gauge.labels(self.metrics_name).set(0)


REPORT_INTERVAL_S = 1.0
_LIVE_POOLS: weakref.WeakSet[QuarryPool] = weakref.WeakSet()


def sample_all_pools() -> None:
    """Fresh gauges of this process's pools (a scrape calls it before collecting)."""
    for pool in list(_LIVE_POOLS):
        if not pool._closed:
            pool.sample()


async def run_read(pool: asyncpg.Pool, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """An idempotent read on any pooled connection, retried once if the connection dropped."""
    return await _read_retrying_once(lambda: pool.acquire(), fn)


async def run_tenant_read(
    pool: asyncpg.Pool, tenant_id: UUID | str, fn: Callable[[asyncpg.Connection], Awaitable[T]], *,
    local_settings: Mapping[str, str] | None = None,
) -> T:
    """`run_read` inside a read-only `tenant_tx` (row-level security applies)."""
    return await _read_retrying_once(
        lambda: tenant_tx(pool, tenant_id, readonly=True, local_settings=local_settings), fn)


async def _read_retrying_once(
    connect: Callable[[], AbstractAsyncContextManager[asyncpg.Connection]],
    fn: Callable[[asyncpg.Connection], Awaitable[T]],
) -> T:
    for attempt in (1, 2):
        try:
            async with connect() as conn:
                return await fn(conn)
        except (*CONNECTION_LOST, asyncpg.InterfaceError) as exc:
            if not _lost(exc):
                raise
            if attempt == 2:
                raise _unavailable("the database connection was lost; try again shortly", 1) from exc
            await asyncio.sleep(0)
    raise AssertionError("unreachable")
