"""The principal cache: a revocation racing a load in flight cannot resurrect the key, and
misses are shared between processes without hiding keys created later.

The race is made deterministic: the load's Postgres read is paused right after it returned the
(still valid) row, the key is revoked and invalidated, and only then does the load go on to
write its result into the tiers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from redis.asyncio import Redis

from storage.caches.bus import InvalidationBus
from storage.caches.guard import RedisGuard
from storage.caches.principals import PrincipalCache, invalidate_key_everywhere
from storage.repositories import api_keys
from storage.repositories.api_keys import generate_key, hash_key
from storage.tenancy import tenant_tx


@asynccontextmanager
async def _process(pool, settings, *, listen: bool = False) -> AsyncIterator[PrincipalCache]:
    """The principal cache of one API process (long TTLs: only invalidation can explain a miss)."""
    redis, bus_redis = Redis.from_url(settings.redis_url), Redis.from_url(settings.redis_url)
    guard = RedisGuard(redis, timeout_s=3.0)
    bus = InvalidationBus(bus_redis, guard)
    cache = PrincipalCache(pool, guard, bus, local_ttl_s=120, redis_ttl_s=120)
    if listen:
        bus.start()
        await asyncio.wait_for(bus.subscribed.wait(), 5)
    try:
        yield cache
    finally:
        await bus.stop()
        await bus_redis.aclose()
        await redis.aclose()


def _pause_after_read(cache: PrincipalCache) -> tuple[asyncio.Event, asyncio.Event]:
    """The next Postgres read returns its row only once `resume` is set; `read` says it has read."""
    read, resume = asyncio.Event(), asyncio.Event()
    real = cache.fetch

    async def paused(key: str):  # type: ignore[no-untyped-def]
        row = await real(key)
        read.set()
        await resume.wait()
        cache.fetch = real  # type: ignore[method-assign]
        return row

    cache.fetch = paused  # type: ignore[method-assign]
    return read, resume


def _heard(cache: PrincipalCache) -> asyncio.Event:
    """Set once this process has handled a principal invalidation (after the cache's own
    handler, which was registered first)."""
    heard = asyncio.Event()
    cache.bus.on("principal", lambda _key_id: heard.set())
    return heard


async def _new_key(pool, tenant_id) -> tuple[str, object]:
    async with tenant_tx(pool, tenant_id) as conn:
        key, record = await api_keys.create_key(conn, tenant_id, "member")
    return key, record.id


async def _revoke(pool, tenant_id, key_id) -> None:
    async with tenant_tx(pool, tenant_id) as conn:
        await api_keys.revoke_key(conn, key_id)


async def _redis_entry(settings, key: str) -> bytes | None:
    redis = Redis.from_url(settings.redis_url)
    try:
        return await redis.get(f"quarry:cache:principal:{hash_key(key).hex()}")
    finally:
        await redis.aclose()


Invalidate = Callable[[PrincipalCache, object], Awaitable[object]]


async def _by_the_same_process(cache: PrincipalCache, key_id) -> object:
    return await cache.invalidate(key_id)


@pytest.mark.parametrize("revoker", ["same process (API)", "another process (CLI)"])
async def test_a_load_in_flight_cannot_resurrect_a_revoked_key(pool, settings, make_tenant, revoker):
    tenant = await make_tenant()
    key, key_id = await _new_key(pool, tenant.id)
    async with _process(pool, settings, listen=True) as cache:
        read, resume = _pause_after_read(cache)
        load = asyncio.create_task(cache.principal(key))
        await asyncio.wait_for(read.wait(), 10)  # the load holds the valid row now
        await _revoke(pool, tenant.id, key_id)
        heard = _heard(cache)
        if revoker.startswith("same"):
            assert await cache.invalidate(key_id)
        else:
            assert await invalidate_key_everywhere(settings.redis_url, key_id)
            await asyncio.wait_for(heard.wait(), 5)  # the message reached this process (its listener)
        resume.set()
        # Even the request already in flight is refused: its write met the tombstone.
        assert await load is None
        # Nothing it wrote survives: not in this process, not in Redis, not for others.
        assert await cache.principal(key) is None
        assert await _redis_entry(settings, key) in (None, b"\xc0")  # absent, or a remembered miss
        async with _process(pool, settings) as other:
            assert await other.principal(key) is None


async def test_the_redis_tier_alone_refuses_a_stale_write(pool, settings, make_tenant):
    """Another process revokes and its message never reaches this one (no listener): the local
    tier may keep the principal for its TTL (the documented bound), but the load's Redis write
    meets the tombstone and is undone, so every other process refuses the key at once."""
    tenant = await make_tenant()
    key, key_id = await _new_key(pool, tenant.id)
    async with _process(pool, settings) as cache:
        read, resume = _pause_after_read(cache)
        load = asyncio.create_task(cache.principal(key))
        await asyncio.wait_for(read.wait(), 10)
        await _revoke(pool, tenant.id, key_id)
        assert await invalidate_key_everywhere(settings.redis_url, key_id)
        resume.set()
        await load
        assert await _redis_entry(settings, key) is None
        async with _process(pool, settings) as other:
            assert await other.principal(key) is None


async def test_a_load_without_a_revocation_is_cached_in_both_tiers(pool, settings, make_tenant):
    """The counterpart of the race tests: the same pause without a revocation leaves the entry
    (so the tests above fail if the race is not handled, rather than because nothing is cached)."""
    tenant = await make_tenant()
    key, key_id = await _new_key(pool, tenant.id)
    async with _process(pool, settings) as cache:
        read, resume = _pause_after_read(cache)
        load = asyncio.create_task(cache.principal(key))
        await asyncio.wait_for(read.wait(), 10)
        resume.set()
        assert (await load).key_id == key_id
        assert cache.local_principal(key) is not None
        assert await _redis_entry(settings, key) not in (None, b"\xc0")


async def test_misses_are_shared_and_never_hide_a_new_key(pool, settings, make_tenant):
    tenant = await make_tenant()
    unknown = generate_key()[0]
    async with _process(pool, settings) as one, _process(pool, settings) as two:
        assert await one.principal(unknown) is None
        assert await _redis_entry(settings, unknown) == b"\xc0"  # a miss, shared through Redis

        async def no_postgres(key: str) -> None:
            raise AssertionError("the other process should have found the miss in Redis")

        two.fetch = no_postgres  # type: ignore[assignment,method-assign]
        assert await two.principal(unknown) is None
        # A key created now is a different string (server-chosen, 256 random bits): it works.
        key, key_id = await _new_key(pool, tenant.id)
        found = await one.principal(key)
        assert found is not None and found.key_id == key_id


async def test_a_revocation_between_the_redis_write_and_the_local_write(pool, settings, make_tenant):
    """The load has written Redis (no tombstone yet) when the revocation comes: the revocation
    deletes that entry, and the load, seeing the invalidation generation moved, does not keep
    the principal in its local tier."""
    tenant = await make_tenant()
    key, key_id = await _new_key(pool, tenant.id)
    async with _process(pool, settings, listen=True) as cache:
        stored, resume = asyncio.Event(), asyncio.Event()
        real_store = cache._store

        async def store_then_pause(*args):  # type: ignore[no-untyped-def]
            ok = await real_store(*args)
            stored.set()
            await resume.wait()
            return ok

        cache._store = store_then_pause  # type: ignore[method-assign]
        load = asyncio.create_task(cache.principal(key))
        await asyncio.wait_for(stored.wait(), 10)
        assert await _redis_entry(settings, key) not in (None, b"\xc0")  # the load's write landed
        await _revoke(pool, tenant.id, key_id)
        heard = _heard(cache)
        assert await invalidate_key_everywhere(settings.redis_url, key_id)
        await asyncio.wait_for(heard.wait(), 5)
        resume.set()
        await load
        assert cache.local_principal(key) is None
        assert await cache.principal(key) is None
        assert await _redis_entry(settings, key) in (None, b"\xc0")
