"""Failed authentications per client address: a fixed one-minute window counter in Redis.

A client that made `limit` failed attempts (well-formed keys that matched nothing) in the
current window is refused with 429 before any key lookup until the window ends. Once a process
has seen a client blocked it remembers so locally until the window ends, so a blocked client
costs no Redis call at all. When Redis is unreachable the count is not kept (fail open: the
negative principal cache still spares Postgres from repeated keys).
"""

from __future__ import annotations

import math
import time

from redis.asyncio import Redis

from storage.caches.guard import RedisGuard, RedisUnavailable
from storage.caches.local import LocalTTLCache

__all__ = ["AuthFailureLimiter"]

_WINDOW_MS = 60_000
# KEYS[1]: the client's counter. Returns {count, ms until the window ends}.
_RECORD = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {n, ttl}
"""


def _key(client: str) -> str:
    return f"quarry:authfail:{client}"


class AuthFailureLimiter:
    def __init__(self, guard: RedisGuard, limit_per_minute: int, *, maxsize: int = 100_000) -> None:
        self.guard = guard
        self.limit = limit_per_minute
        self._blocked: LocalTTLCache[str, float] = LocalTTLCache(maxsize, _WINDOW_MS / 1000)
        self._record = guard.redis.register_script(_RECORD)

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    async def retry_after(self, client: str) -> int | None:
        """Seconds until `client` may try again, or None when it may try now."""
        if not self.enabled:
            return None
        until = self._blocked.get(client)
        if isinstance(until, float):
            return max(1, math.ceil(until - time.monotonic()))

        async def read(r: Redis) -> list[int | None]:
            async with r.pipeline(transaction=False) as pipe:
                pipe.get(_key(client))
                pipe.pttl(_key(client))
                count, ttl = await pipe.execute()
            return [int(count) if count is not None else None, int(ttl)]

        try:
            count, ttl_ms = await self.guard.call(read)
        except RedisUnavailable:
            return None
        if count is None or count < self.limit or ttl_ms is None or ttl_ms <= 0:
            return None
        return self._block(client, ttl_ms)

    async def record(self, client: str) -> None:
        """One more failure; blocks the client locally once it reaches the limit."""
        if not self.enabled:
            return
        try:
            count, ttl_ms = await self.guard.call(
                lambda r: self._record(keys=[_key(client)], args=[_WINDOW_MS], client=r))
        except RedisUnavailable:
            return
        if int(count) >= self.limit:
            self._block(client, int(ttl_ms))

    def _block(self, client: str, ttl_ms: int) -> int:
        seconds = max(1.0, ttl_ms / 1000)
        self._blocked.set(client, time.monotonic() + seconds, seconds)
        return math.ceil(seconds)
