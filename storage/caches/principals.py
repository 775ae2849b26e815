"""API key → principal, cached in two tiers (see `tiered`), revocable at once.

Entries are keyed by the sha256 of the key (the key itself is never stored, not even in
Redis) and carry the key's expiry, so a cached principal never outlives its key. Revoking a
key deletes its Redis entry (found through a key id → hash index) and publishes
``principal:<key id>`` so every process drops its local copy; if Redis is unreachable at that
moment, other processes still drop it when their local TTL runs out.

Unknown keys are remembered as misses in both tiers for `NEGATIVE_TTL_S`, so a flood of
wrong keys costs Postgres one query per distinct key and cluster, not per request. A miss can
never hide a key created later: a miss is filed under the hash of the exact string that was
tried, and a new key is 256 random bits chosen by the server (`api_keys.generate_key`), so it
is that string only if someone guessed it beforehand (probability 2^-256); nothing turns an
existing row valid again either (revocation and expiry are final).

Revocation against a load in flight (the load read the row just before the revoke committed,
and writes it after the revoke cleared the caches) cannot resurrect the key:
- Redis: the revoke writes a tombstone ``principal-revoked:<key id>`` *before* deleting the
  entry; a load writes the entry and its index *before* checking for a tombstone, and deletes
  what it wrote when it finds one. Whatever the interleaving, either the load sees the
  tombstone or the revoke's delete comes after the load's write (single-key commands only,
  so this also holds on Redis Cluster).
- Local tier: every invalidation this process hears bumps a generation counter; a load keeps
  its result locally only if the generation did not move while it ran. A load that took
  longer than `_MAX_LOAD_AGE_S` caches nothing (the tombstone outlives any load that counts).
"""

from __future__ import annotations

import time
from datetime import datetime
from uuid import UUID

import asyncpg
import msgspec
from redis.asyncio import Redis

from core.metrics import CACHE_HITS, CACHE_MISSES
from storage.caches.bus import CHANNEL, InvalidationBus
from storage.caches.guard import RedisGuard, RedisUnavailable
from storage.caches.local import _Missing
from storage.caches.tiered import TieredCache
from storage.models import Principal
from storage.pooling import run_read
from storage.repositories._rows import to_struct
from storage.repositories.api_keys import hash_key

__all__ = ["NEGATIVE_TTL_S", "CachedPrincipal", "PrincipalCache", "invalidate_key_everywhere"]

_KIND = "principal"
NEGATIVE_TTL_S = 10
_TOMBSTONE_TTL_S = 3600
_MAX_LOAD_AGE_S = 60.0


def _index_key(key_id: UUID | str) -> str:
    return f"quarry:cache:{_KIND}-id:{key_id}"


def _tombstone_key(key_id: UUID | str) -> str:
    return f"quarry:cache:{_KIND}-revoked:{key_id}"


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
            _KIND, guard, CachedPrincipal, local_ttl_s=local_ttl_s, redis_ttl_s=redis_ttl_s, maxsize=maxsize,
            negative_ttl_s=min(NEGATIVE_TTL_S, redis_ttl_s) if redis_ttl_s else 0)
        self.generation = 0  # bumped by every invalidation this process hears
        bus.on(_KIND, self._drop_local)
        bus.on_reconnect(self._clear_local)

    def local_principal(self, key: str) -> Principal | None:
        """The principal if this process's tier holds it (no I/O at all), else None."""
        entry = self.cache.local.get(hash_key(key).hex())
        if not isinstance(entry, CachedPrincipal) or _expired(entry):
            return None
        CACHE_HITS.labels(_KIND, "local").inc()
        return entry.principal

    async def principal(self, key: str) -> Principal | None:
        digest = hash_key(key).hex()
        entry = await self.cache.cached(digest)
        if isinstance(entry, _Missing):
            entry = await self._load(key, digest)
        if entry is None:
            return None
        if _expired(entry):
            await self.cache.delete(digest)
            return None
        return entry.principal

    async def fetch(self, key: str) -> _LookupRow | None:
        """The key's row from Postgres (a SECURITY DEFINER lookup: no tenant is known yet)."""
        row = await run_read(self.pool, lambda conn: conn.fetchrow("SELECT * FROM quarry_auth_lookup($1)",
                                                                   hash_key(key)))
        return None if row is None else to_struct(row, _LookupRow)

    async def _load(self, key: str, digest: str) -> CachedPrincipal | None:
        generation, started = self.generation, time.monotonic()
        CACHE_MISSES.labels(_KIND).inc()
        found = await self.fetch(key)
        if found is None:
            await self.cache.remember_miss(digest)
            return None
        principal = msgspec.convert(msgspec.to_builtins(found), Principal)  # drops expires_at
        expires = found.expires_at.timestamp() if found.expires_at else None
        entry = CachedPrincipal(principal, expires)
        ttl = self.cache.redis_ttl_s if expires is None else min(self.cache.redis_ttl_s, expires - time.time())
        if time.monotonic() - started > _MAX_LOAD_AGE_S:
            return entry  # too old to trust against a revocation that may have come meanwhile
        if ttl >= 1 and not await self._store(found.key_id, digest, entry, int(ttl)):
            return None  # revoked while we loaded
        if self.generation == generation:
            self.cache.local.set(digest, entry, ttl)
        return entry

    async def _store(self, key_id: UUID, digest: str, entry: CachedPrincipal, ttl_s: int) -> bool:
        """Write the entry and its index, then check for a tombstone (see the module docstring).
        False when the key was revoked meanwhile; True also when Redis is unreachable."""
        entry_key, raw = self.cache.redis_key(digest), self.cache.encode(entry)

        async def write_then_check(r: Redis) -> bool:
            async with r.pipeline(transaction=False) as pipe:
                pipe.set(entry_key, raw, ex=ttl_s)
                pipe.set(_index_key(key_id), digest, ex=ttl_s + 5)
                await pipe.execute()
            if await r.exists(_tombstone_key(key_id)):
                await r.delete(entry_key)
                return False
            return True

        try:
            return await self.guard.call(write_then_check)
        except RedisUnavailable:
            return True

    def _drop_local(self, key_id: str) -> None:
        self.generation += 1
        self.cache.local.drop_where(lambda e: e is not None and str(e.principal.key_id) == key_id)

    def _clear_local(self) -> None:
        self.generation += 1
        self.cache.local.clear()

    async def invalidate(self, key_id: UUID) -> bool:
        """After a revocation: gone from Redis and from every process's local tier.
        False when Redis was unreachable (local tiers then expire within their TTL)."""
        ok = True
        try:
            await self.guard.call(lambda r: r.set(_tombstone_key(key_id), b"1", ex=_TOMBSTONE_TTL_S))
            digest = await self.guard.call(lambda r: r.getdel(_index_key(key_id)))
            if digest is not None:
                ok = await self.cache.delete(digest.decode())
        except RedisUnavailable:
            ok = False
        published = await self.bus.publish(_KIND, str(key_id))
        return ok and published


def _expired(entry: CachedPrincipal) -> bool:
    return entry.expires_at is not None and entry.expires_at <= time.time()


async def invalidate_key_everywhere(redis_url: str, key_id: UUID, timeout_s: float = 2.0) -> bool:
    """For processes without the API's caches (the CLI): tombstone the key, drop its Redis entry
    and tell every API process to drop its local copy. False when Redis could not be reached."""
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    redis = Redis.from_url(redis_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        await redis.set(_tombstone_key(key_id), b"1", ex=_TOMBSTONE_TTL_S)
        digest = await redis.getdel(_index_key(key_id))
        if digest is not None:
            await redis.delete(f"quarry:cache:{_KIND}:{digest.decode()}")
        await redis.publish(CHANNEL, f"{_KIND}:{key_id}")
    except (RedisError, OSError):
        return False
    finally:
        await redis.aclose()
    return True
