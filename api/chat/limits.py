"""Chat limits: concurrent streams per tenant (Redis) and the monthly token budget (Postgres).

Stream slots are places in a per-tenant `storage.semaphore` whose lease is the TTL (longer than
any run may last, so no renewal is needed): a worker that crashed while holding slots cannot
leak them for longer than that.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from datetime import time as dtime
from uuid import UUID

import asyncpg
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from core.errors import RateLimited, Unavailable
from storage import semaphore
from storage.repositories.usage import month_of, month_usage, next_month

__all__ = ["STREAM_RETRY_AFTER_S", "StreamSlots", "limits_redis", "remaining_budget"]

STREAM_RETRY_AFTER_S = 2

def limits_redis(url: str, max_connections: int = 64) -> Redis:
    """The chat limiter's own Redis client. A BlockingConnectionPool because redis-py's default
    pool holds its lock while it health-checks a connection (an await): with hundreds of busy
    streams on the event loop every Redis call then queues behind that lock (measured here: 2k
    vs 10k commands/s, p50 51 vs 10 ms, on a loop kept busy by 50 tasks)."""
    pool = BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=5,
                                           socket_connect_timeout=2, socket_timeout=5, health_check_interval=30)
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes its connections


class StreamSlots:
    """At most `cap` chats of one tenant run at once, across every API worker.

    One instance per process (`api.chat.service.stream_slots`). Acquisitions and releases
    made in the same turn of the event loop go to Redis together, in one script call
    (`storage.semaphore.apply`), the releases first: two redis-py round trips per chat cost
    ~0.28 ms of the API's CPU (1.31 vs 1.03 ms per chat without them, measured with
    perf/chat_bench.py), and a burst of chats starting together pays for a few calls instead of
    one per chat. Nothing waits for a batch to fill: the call leaves on the loop's next turn.
    """

    def __init__(self, redis: Redis, cap: int, ttl_s: int, *, kind: str = "chat", busy: str = "chats running") -> None:
        """`kind` names the semaphore (other streams reuse this class: document progress has its own
        places, `api.documents.progress`); `busy` completes the 429's "this tenant already has N ..."."""
        self.redis = redis
        self.cap = cap
        self.ttl_s = ttl_s
        self.kind = kind
        self.busy = busy
        self.calls = 0  # script calls so far (the batching is observable)
        self._acquires: list[tuple[str, str, asyncio.Future[bool]]] = []
        self._releases: list[tuple[str, str, asyncio.Future[None] | None]] = []
        self._scheduled = False
        self._flushing: set[asyncio.Task[None]] = set()  # strong references

    def key(self, tenant_id: UUID) -> str:
        return f"quarry:{self.kind}:streams:{tenant_id}"

    async def acquire(self, tenant_id: UUID) -> str:
        """A slot token, or 429 (with Retry-After) when the tenant already runs `cap` chats."""
        token = uuid.uuid4().hex
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._acquires.append((self.key(tenant_id), token, future))
        self._schedule()
        try:
            acquired = await future
        except (RedisError, OSError) as exc:
            raise Unavailable(f"the {self.kind} stream limiter (Redis) is unavailable; try again shortly") from exc
        if not acquired:
            error = RateLimited(f"this tenant already has {self.cap} {self.busy}; try again when one ends",
                                limit=self.cap)
            error.headers["Retry-After"] = str(STREAM_RETRY_AFTER_S)
            raise error
        return token

    async def release(self, tenant_id: UUID, token: str) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._releases.append((self.key(tenant_id), token, future))
        self._schedule()
        await future

    async def in_use(self, tenant_id: UUID) -> int:
        return int(await self.redis.zcard(self.key(tenant_id)))

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        acquires, self._acquires = self._acquires, []
        releases, self._releases = self._releases, []
        if acquires or releases:
            task = asyncio.ensure_future(self._apply(acquires, releases))
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)

    async def _apply(self, acquires: list[tuple[str, str, asyncio.Future[bool]]],
                     releases: list[tuple[str, str, asyncio.Future[None] | None]]) -> None:
        self.calls += 1
        try:
            got = await semaphore.apply(self.redis, [(key, token) for key, token, _ in releases],
                                        [(key, token, self.cap, self.ttl_s) for key, token, _ in acquires])
        except BaseException as exc:  # every waiter learns it; none hangs
            for *_, waiter in [*acquires, *releases]:
                if waiter is None or waiter.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    waiter.cancel()
                else:
                    waiter.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (key, token, future), ok in zip(acquires, got, strict=True):
            if not future.done():
                future.set_result(ok)
            elif ok:  # its chat was cancelled while the place was taken: give it back now
                self._releases.append((key, token, None))
                self._schedule()
        for *_, waiter in releases:
            if waiter is not None and not waiter.done():
                waiter.set_result(None)


async def remaining_budget(
    conn: asyncpg.Connection, budget: int, pending: Callable[[date], int] = lambda _month: 0
) -> int | None:
    """Tokens the current tenant may still spend this month (None = unlimited); 429 when none.
    `pending(month)`: tokens counted but not written yet. Run inside the tenant's transaction."""
    if budget <= 0:
        return None
    month = month_of()
    used = (await month_usage(conn, month)).total_tokens + pending(month)
    if used >= budget:
        resets = datetime.combine(next_month(month), dtime.min, tzinfo=UTC)
        error = RateLimited(
            f"this tenant has used its monthly LLM budget of {budget} tokens; it renews on {resets.date()}",
            budget=budget, used=used, resets_at=resets.isoformat(),
        )
        error.headers["Retry-After"] = str(max(1, int((resets - datetime.now(UTC)).total_seconds())))
        raise error
    return budget - used
