"""Two tiers: an in-process LRU with a short TTL in front of Redis with a longer one.

The local tier absorbs the hot path (no network at all); Redis shares entries between the
API worker processes and survives their restarts. Invalidation deletes the Redis entry and
publishes a message (see `bus`) so every process drops its local copy; a process that misses
the message (Redis down) still drops it when the local TTL runs out, which bounds staleness.

Misses (the loader found nothing) are remembered too: locally always, and in Redis for
`negative_ttl_s` when that is set (stored as msgpack nil), so every process shares them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import msgspec

from core.metrics import CACHE_ERRORS, CACHE_HITS, CACHE_MISSES
from storage.caches.guard import RedisGuard, RedisUnavailable
from storage.caches.local import MISSING, LocalTTLCache, _Missing

__all__ = ["TieredCache"]

V = TypeVar("V")
Loader = Callable[[], Awaitable[tuple[V | None, float | None]]]


class TieredCache(Generic[V]):
    """`get(key, loader)`: local → Redis → loader. The loader returns (value, max TTL in
    seconds or None); a None value is a miss, remembered locally (and in Redis for
    `negative_ttl_s` seconds when that is > 0)."""

    def __init__(self, name: str, guard: RedisGuard, value_type: type[V], *, local_ttl_s: float,
                 redis_ttl_s: float, maxsize: int = 10_000, negative_ttl_s: float = 0.0) -> None:
        self.name = name
        self.guard = guard
        self.local: LocalTTLCache[str, V | None] = LocalTTLCache(maxsize, local_ttl_s)
        self.redis_ttl_s = redis_ttl_s
        self.negative_ttl_s = negative_ttl_s
        self._encoder = msgspec.msgpack.Encoder()
        optional: Any = value_type | None
        self._decoder: msgspec.msgpack.Decoder[V | None] = msgspec.msgpack.Decoder(optional)

    def redis_key(self, key: str) -> str:
        return f"quarry:cache:{self.name}:{key}"

    def encode(self, value: V | None) -> bytes:
        return self._encoder.encode(value)

    async def cached(self, key: str) -> V | _Missing | None:
        """The local or Redis entry: a value, None (a remembered miss) or MISSING."""
        value = self.local.get(key)
        if value is not MISSING:
            CACHE_HITS.labels(self.name, "local").inc()
            return value
        raw = await self._redis_get(key)
        if raw is None:
            return MISSING
        try:
            decoded = self._decoder.decode(raw)
        except msgspec.DecodeError:
            return MISSING  # written by another version of the code: reload
        CACHE_HITS.labels(self.name, "redis").inc()
        self.local.set(key, decoded, None if decoded is not None else self.negative_ttl_s)
        return decoded

    async def get(self, key: str, loader: Loader[V]) -> V | None:
        found = await self.cached(key)
        if not isinstance(found, _Missing):
            return found
        CACHE_MISSES.labels(self.name).inc()
        loaded, max_ttl = await loader()
        if loaded is None:
            await self.remember_miss(key)
            return None
        ttl = self.redis_ttl_s if max_ttl is None else min(self.redis_ttl_s, max_ttl)
        self.local.set(key, loaded, ttl)
        if ttl >= 1:
            await self._redis_set(key, self.encode(loaded), int(ttl))
        return loaded

    async def remember_miss(self, key: str) -> None:
        if self.negative_ttl_s <= 0:
            self.local.set(key, None)  # locally only, as long as a value would be
            return
        self.local.set(key, None, self.negative_ttl_s)
        if self.negative_ttl_s >= 1:
            await self._redis_set(key, self.encode(None), int(self.negative_ttl_s))

    async def _redis_get(self, key: str) -> bytes | None:
        try:
            return await self.guard.call(lambda r: r.get(self.redis_key(key)))
        except RedisUnavailable:
            CACHE_ERRORS.labels(self.name).inc()
            return None

    async def _redis_set(self, key: str, raw: bytes, ttl_s: int) -> None:
        try:
            await self.guard.call(lambda r: r.set(self.redis_key(key), raw, ex=ttl_s))
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
