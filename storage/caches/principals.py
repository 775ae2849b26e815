"""API key → principal, cached in two tiers (see `tiered`), revocable at once.

Entries are keyed by the sha256 of the key (the key itself is never stored, not even in
Redis) and carry the key's expiry, so a cached principal never outlives its key. Revoking a
key deletes its Redis entry (found through a key id → hash index) and publishes
``principal:<key id>`` so every process drops its local copy; if Redis is unreachable at that
moment, other processes still drop it when their local TTL runs out.
"""

from __future__ import annotations

import time
from datetime import datetime
from uuid import UUID

import asyncpg
import msgspec

from storage.caches.bus import CHANNEL, InvalidationBus
from storage.caches.guard import RedisGuard, RedisUnavailable
from storage.caches.tiered import TieredCache
from storage.models import Principal
from storage.pooling import run_read
from storage.repositories._rows import to_struct
from storage.repositories.api_keys import hash_key

__all__ = ["CachedPrincipal", "PrincipalCache", "invalidate_key_everywhere"]

_KIND = "principal"


class CachedPrincipal(msgspec.Struct, frozen=True):
    principal: Principal
    expires_at: float | None  # epoch seconds


class _LookupRow(msgspec.Struct, kw_only=True):
    key_id: UUID
    tenant_id: UUID
    tenant_name: str
    is_operator: bool
    role: str
    user_id: UUID | None
    prefix: str
    expires_at: datetime | None


class PrincipalCache:
    def __init__(self, pool: asyncpg.Pool, guard: RedisGuard, bus: InvalidationBus, *, local_ttl_s: float,
                 redis_ttl_s: float, maxsize: int = 10_000) -> None:
        self.pool = pool
        self.guard = guard
        self.bus = bus
        self.cache: TieredCache[CachedPrincipal] = TieredCache(
            _KIND, guard, CachedPrincipal, local_ttl_s=local_ttl_s, redis_ttl_s=redis_ttl_s, maxsize=maxsize)
        bus.on(_KIND, self._drop_local)
        bus.on_reconnect(self.cache.local.clear)

    async def principal(self, key: str) -> Principal | None:
        digest = hash_key(key).hex()
        entry = await self.cache.get(digest, lambda: self._load(key, digest))
        if entry is None:
            return None
        if entry.expires_at is not None and entry.expires_at <= time.time():
            await self.cache.delete(digest)
            return None
        return entry.principal

    async def _load(self, key: str, digest: str) -> tuple[CachedPrincipal | None, float | None]:
        row = await run_read(self.pool, lambda conn: conn.fetchrow("SELECT * FROM quarry_auth_lookup($1)",
                                                                   hash_key(key)))
        if row is None:
            return None, None
        found = to_struct(row, _LookupRow)
        principal = msgspec.convert(msgspec.to_builtins(found), Principal)  # drops expires_at
        expires = found.expires_at.timestamp() if found.expires_at else None
        ttl = None if expires is None else max(0.0, expires - time.time())
        if ttl is None or ttl >= 1:
            await self._index(found.key_id, digest, int(min(ttl or self.cache.redis_ttl_s, self.cache.redis_ttl_s)))
        return CachedPrincipal(principal, expires), ttl

    async def _index(self, key_id: UUID, digest: str, ttl_s: int) -> None:
        """key id → hash, so a revocation (which knows only the id) finds the Redis entry."""
        try:
            await self.guard.call(lambda r: r.set(f"quarry:cache:{_KIND}-id:{key_id}", digest, ex=ttl_s + 5))
        except RedisUnavailable:
            pass

    def _drop_local(self, key_id: str) -> None:
        self.cache.local.drop_where(lambda e: e is not None and str(e.principal.key_id) == key_id)

    async def invalidate(self, key_id: UUID) -> bool:
        """After a revocation: gone from Redis and from every process's local tier.
        False when Redis was unreachable (local tiers then expire within their TTL)."""
        ok = True
        try:
            digest = await self.guard.call(lambda r: r.getdel(f"quarry:cache:{_KIND}-id:{key_id}"))
            if digest is not None:
                ok = await self.cache.delete(digest.decode())
        except RedisUnavailable:
            ok = False
        published = await self.bus.publish(_KIND, str(key_id))
        return ok and published


async def invalidate_key_everywhere(redis_url: str, key_id: UUID, timeout_s: float = 2.0) -> bool:
    """For processes without the API's caches (the CLI): drop the key's Redis entry and tell
    every API process to drop its local copy. False when Redis could not be reached."""
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    redis = Redis.from_url(redis_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        digest = await redis.getdel(f"quarry:cache:{_KIND}-id:{key_id}")
        if digest is not None:
            await redis.delete(f"quarry:cache:{_KIND}:{digest.decode()}")
        await redis.publish(CHANNEL, f"{_KIND}:{key_id}")
    except (RedisError, OSError):
        return False
    finally:
        await redis.aclose()
    return True
