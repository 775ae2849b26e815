"""Two tiers: an in-process LRU with a short TTL in front of Redis with a longer one.

The local tier absorbs the hot path (no network at all); Redis shares entries between the
API worker processes and survives their restarts. Invalidation deletes the Redis entry and
publishes a message (see `bus`) so every process drops its local copy; a process that misses
the message (Redis down) still drops it when the local TTL runs out, which bounds staleness.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import msgspec

from core.metrics import CACHE_ERRORS, CACHE_HITS, CACHE_MISSES
from storage.caches.guard import RedisGuard, RedisUnavailable
from storage.caches.local import MISSING, LocalTTLCache

__all__ = ["TieredCache"]

V = TypeVar("V")
Loader = Callable[[], Awaitable[tuple[V | None, float | None]]]


class TieredCache(Generic[V]):
    """`get(key, loader)`: local → Redis → loader. The loader returns (value, max TTL in
    seconds or None); a None value is remembered locally only (negative caching)."""

    def __init__(self, name: str, guard: RedisGuard, value_type: type[V], *, local_ttl_s: float,
                 redis_ttl_s: float, maxsize: int = 10_000) -> None:
        self.name = name
        self.guard = guard
        self.local: LocalTTLCache[str, V | None] = LocalTTLCache(maxsize, local_ttl_s)
        self.redis_ttl_s = redis_ttl_s
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(value_type)

    def redis_key(self, key: str) -> str:
        return f"quarry:cache:{self.name}:{key}"

    async def get(self, key: str, loader: Loader[V]) -> V | None:
        value = self.local.get(key)
        if value is not MISSING:
            CACHE_HITS.labels(self.name, "local").inc()
            return value  # type: ignore[return-value]
        raw = await self._redis_get(key)
        if raw is not None:
            try:
                decoded = self._decoder.decode(raw)
            except msgspec.DecodeError:
                decoded = None  # written by another version of the code: reload
            if decoded is not None:
                CACHE_HITS.labels(self.name, "redis").inc()
                self.local.set(key, decoded)
                return decoded
        CACHE_MISSES.labels(self.name).inc()
        loaded, max_ttl = await loader()
        ttl = self.redis_ttl_s if max_ttl is None else min(self.redis_ttl_s, max_ttl)
        self.local.set(key, loaded, ttl)
        if loaded is not None and ttl >= 1:
            await self._redis_set(key, loaded, int(ttl))
        return loaded

    async def _redis_get(self, key: str) -> bytes | None:
        try:
            return await self.guard.call(lambda r: r.get(self.redis_key(key)))
        except RedisUnavailable:
            CACHE_ERRORS.labels(self.name).inc()
            return None

    async def _redis_set(self, key: str, value: V, ttl_s: int) -> None:
        try:
            await self.guard.call(lambda r: r.set(self.redis_key(key), self._encoder.encode(value), ex=ttl_s))
        except RedisUnavailable:
            CACHE_ERRORS.labels(self.name).inc()

    async def delete(self, key: str) -> bool:
        """Drop an entry everywhere we can reach; False if Redis could not be reached."""
        self.local.pop(key)
        try:
            await self.guard.call(lambda r: r.delete(self.redis_key(key)))
        except RedisUnavailable:
            CACHE_ERRORS.labels(self.name).inc()
            return False
        return True
