"""Read replicas: searches and listings read from streaming standbys, everything else from the primary.

`ReplicaSet` holds one pool per replica (`DATABASE_REPLICA_URLS`) next to the primary's and a
background task that checks every replica each interval:

- **Lag, measured in time, right when the primary is idle.** Each check first reads the
  primary's `pg_current_wal_lsn()` (a *snapshot*: every transaction committed before the
  check started is at or below it), then each replica's `pg_last_wal_replay_lsn()`. A replica
  whose replay position has reached a snapshot taken at time t holds everything committed
  before t: its `synced_at` is the newest such t, and its lag is `now - synced_at` - an upper
  bound, in steps of the check interval. (`now() - pg_last_xact_replay_timestamp()` is wrong
  both ways: it grows without bound while the primary is idle, and reports the whole idle
  period as lag when the first new commit is a millisecond away from replay.)
- A replica that cannot be reached, is not in recovery (promoted, or the primary itself), or
  whose lag exceeds `QUARRY_REPLICA_MAX_LAG_MS` is skipped; it is used again as soon as a
  check finds it reachable and caught up. A read that finds its replica unreachable between
  checks falls back to the primary at once (and skips the replica until the next check).
- **Read-your-writes.** Every API write request marks its tenant with the time it finished
  (`WriteMarks`, in Redis, so all workers see it; set before the response is sent). A read
  may use a replica only if that replica's `synced_at` is later than the tenant's last write
  (plus a margin for clock skew between hosts): a tenant that just wrote reads from the
  primary until a check has seen a replica replay past that write - typically one interval.
  When Redis cannot be reached, reads go to the primary (the marks are unknown).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from uuid import UUID

import asyncpg

from core.metrics import DB_READS, DB_REPLICA_HEALTHY, DB_REPLICA_LAG
from storage.caches.guard import RedisGuard, RedisUnavailable
from storage.db import create_pool
from storage.pooling import DatabaseUnreachable

__all__ = ["Replica", "ReplicaRoute", "ReplicaSet", "WriteMarks", "connect_replicas"]

_log = logging.getLogger("quarry.replicas")

# Writer and reader may run on different hosts: a replica must have synced this much later
# than the write's recorded time, covering clock skew between NTP-synced machines.
CLOCK_MARGIN_S = 0.25


class WriteMarks:
    """When each tenant last wrote, shared by every process through Redis."""

    def __init__(self, guard: RedisGuard, *, ttl_s: float) -> None:
        self.guard = guard
        self.ttl_ms = max(1000, math.ceil(ttl_s * 1000))

    @staticmethod
    def key(tenant_id: UUID | str) -> str:
        return f"quarry:lastwrite:{tenant_id}"

    async def mark(self, tenant_id: UUID | str) -> None:
        """Record a write that has committed. Without Redis the mark is lost, but then every
        reader is routed to the primary anyway (`last_write` fails the same way)."""
        value = repr(time.time())
        with contextlib.suppress(RedisUnavailable):
            await self.guard.call(lambda r: r.set(self.key(tenant_id), value, px=self.ttl_ms))

    async def last_write(self, tenant_id: UUID | str) -> float | None:
        """Time of the tenant's last write still within the TTL; +inf when unknown (no Redis)."""
        try:
            raw = await self.guard.call(lambda r: r.get(self.key(tenant_id)))
        except RedisUnavailable:
            return math.inf
        if raw is None:
            return None
        try:
            return float(raw)
        except ValueError:
            return math.inf


@dataclass(eq=False)
class Replica:
    name: str  # "replica0", ...: the pool label in /metrics
    pool: asyncpg.Pool
    healthy: bool = False
    synced_at: float | None = None
    """Wall-clock time before which everything committed on the primary is replayed here."""
    lag_s: float | None = None
    state: str = "not checked yet"

    def set(self, healthy: bool, state: str, lag_s: float | None = None) -> None:
        if healthy != self.healthy:
            log = _log.info if healthy else _log.warning
            log("read replica %s %s", self.name, "is back in use" if healthy else f"skipped: {state}")
        self.healthy, self.state, self.lag_s = healthy, state, lag_s
        DB_REPLICA_HEALTHY.labels(self.name).set(1 if healthy else 0)
        if lag_s is not None:
            DB_REPLICA_LAG.labels(self.name).set(lag_s)


@dataclass(eq=False)
class ReplicaSet:
    primary: asyncpg.Pool
    replicas: list[Replica]
    marks: WriteMarks | None
    max_lag_s: float
    interval_s: float
    check_timeout_s: float = 1.0
    _snapshots: deque[tuple[float, int]] = field(default_factory=deque)
    _turn: itertools.count[int] = field(default_factory=itertools.count)
    _task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        # Enough primary snapshots to tell a lag up to twice the bound.
        self._snapshots = deque(maxlen=max(16, math.ceil(2 * self.max_lag_s / self.interval_s) + 4))

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the health checks (the first runs at once); replicas are skipped until checked."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="quarry-replica-checks")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for replica in self.replicas:
            await replica.pool.close()
            DB_REPLICA_HEALTHY.labels(replica.name).set(0)

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # never let the checks die: replicas would stay as last seen
                _log.exception("read replica check failed")
            await asyncio.sleep(self.interval_s)

    # --- health ------------------------------------------------------------------------------
    async def check(self) -> None:
        """One round: a snapshot of the primary's WAL position, then every replica."""
        started = time.time()
        try:
            async with asyncio.timeout(self.check_timeout_s), self.primary.acquire() as conn:
                lsn = await conn.fetchval("SELECT pg_current_wal_lsn()")
            self._snapshots.append((started, int(lsn)))
        except Exception as exc:  # primary unreachable: replicas' lag keeps growing from synced_at
            _log.debug("replica check: no primary WAL position (%s)", type(exc).__name__)
        await asyncio.gather(*(self._check_replica(replica) for replica in self.replicas))

    async def _check_replica(self, replica: Replica) -> None:
        try:
            async with asyncio.timeout(self.check_timeout_s), replica.pool.acquire() as conn:
                row = await conn.fetchrow("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()")
        except Exception as exc:
            replica.set(False, f"unreachable ({type(exc).__name__})")
            return
        in_recovery, replayed = row[0], row[1]
        if not in_recovery or replayed is None:
            replica.set(False, "not a standby (pg_is_in_recovery() is false)")
            return
        for taken_at, lsn in reversed(self._snapshots):
            if lsn <= int(replayed):
                replica.synced_at = max(replica.synced_at or taken_at, taken_at)
                break
        oldest = self._snapshots[0][0] if self._snapshots else time.time()
        lag = time.time() - (replica.synced_at if replica.synced_at is not None else oldest)
        if replica.synced_at is None or lag > self.max_lag_s:
            replica.set(False, f"lagging ({lag:.1f} s behind, bound {self.max_lag_s:g} s)", lag)
        else:
            replica.set(True, "ok", lag)

    # --- routing -----------------------------------------------------------------------------
    def pick(self, written_at: float | None = None) -> Replica | None:
        """A healthy replica that has replayed past `written_at` (round-robin), else None."""
        usable = [r for r in self.replicas if r.healthy and (
            written_at is None or (r.synced_at is not None and r.synced_at >= written_at + CLOCK_MARGIN_S))]
        if not usable:
            return None
        return usable[next(self._turn) % len(usable)]

    async def read_pool(self, tenant_id: UUID | str) -> Any:
        """What a search or listing of `tenant_id` should read from: a replica (as a pool that
        falls back to the primary when it cannot be reached), or the primary pool itself."""
        if not any(r.healthy for r in self.replicas):
            DB_READS.labels("primary").inc()
            return self.primary
        written_at = await self.marks.last_write(tenant_id) if self.marks is not None else None
        replica = self.pick(written_at)
        if replica is None:
            DB_READS.labels("primary").inc()
            return self.primary
        return ReplicaRoute(self, replica)

    def status(self) -> dict[str, str]:
        """Each replica's state, for /readyz."""
        return {r.name: r.state for r in self.replicas}


class ReplicaRoute:
    """A replica's pool as read handlers see it (`acquire()` only, like asyncpg.Pool's): when
    the replica cannot be reached it hands out a primary connection instead."""

    def __init__(self, replicas: ReplicaSet, replica: Replica) -> None:
        self.replicas = replicas
        self.replica = replica

    def acquire(self) -> _FallbackAcquire:
        return _FallbackAcquire(self)


class _FallbackAcquire:
    def __init__(self, route: ReplicaRoute) -> None:
        self.route = route
        self._ctx: Any = None

    async def __aenter__(self) -> asyncpg.Connection:
        replica = self.route.replica
        self._ctx = replica.pool.acquire()
        try:
            conn = await self._ctx.__aenter__()
        except DatabaseUnreachable:
            replica.set(False, "unreachable (a read found it down)")
            self._ctx = self.route.replicas.primary.acquire()
            conn = await self._ctx.__aenter__()
            DB_READS.labels("primary").inc()
            return conn
        DB_READS.labels(replica.name).inc()
        return conn

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        result: bool | None = await self._ctx.__aexit__(exc_type, exc, tb)
        return result


async def connect_replicas(
    primary: asyncpg.Pool, urls: Sequence[str], *, marks: WriteMarks | None, max_lag_s: float, interval_s: float,
    **pool_options: Any,
) -> ReplicaSet:
    """Pools for `urls` (application-role URLs; nothing connects yet) and their health checks."""
    replicas = []
    for index, url in enumerate(urls):
        name = f"replica{index}"
        pool = await create_pool(url, min_size=0, metrics_name=name, **pool_options)
        replicas.append(Replica(name, pool))
        DB_REPLICA_HEALTHY.labels(name).set(0)
    replica_set = ReplicaSet(primary, replicas, marks, max_lag_s=max_lag_s, interval_s=interval_s,
                             check_timeout_s=max(1.0, 2 * interval_s))
    replica_set.start()
    return replica_set
