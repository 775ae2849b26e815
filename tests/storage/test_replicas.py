"""Read replicas against a real streaming standby (pg_basebackup of the session's Postgres):
health checks, lag measured through WAL positions, skipping and recovery, fallback when
unreachable, and read-your-writes marks."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import asyncpg
import pytest
from redis.asyncio import Redis

from core.settings import Settings
from storage.caches.guard import RedisGuard
from storage.db import create_pool
from storage.embedded import free_port
from storage.replicas import Replica, ReplicaRoute, ReplicaSet, WriteMarks
from storage.repositories import collections
from storage.tenancy import tenant_tx
from storage.urls import with_credentials
from tests.replica_helpers import eventually, replay_paused


@pytest.fixture
async def replica_pool(replica_admin_url: str, settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """The application role's pool on the replica (row-level security applies there too)."""
    pool = await create_pool(with_credentials(replica_admin_url, "quarry_app", settings.app_db_password),
                             min_size=0, max_size=3, acquire_timeout_s=2, metrics_name="replica0")
    yield pool
    await pool.close()


def _replica_set(primary: asyncpg.Pool, replica_pool: asyncpg.Pool, *, max_lag_s: float = 60,
                 marks: WriteMarks | None = None) -> ReplicaSet:
    return ReplicaSet(primary, [Replica("replica0", replica_pool)], marks, max_lag_s=max_lag_s, interval_s=0.05)


async def _healthy(rs: ReplicaSet) -> bool:
    await rs.check()
    return rs.replicas[0].healthy


async def _new_collection(pool: asyncpg.Pool, tenant_id: object, name: str) -> object:
    async with tenant_tx(pool, tenant_id) as conn:  # type: ignore[arg-type]
        return (await collections.create_collection(conn, tenant_id, name, "")).id  # type: ignore[arg-type]


async def _names_via(pool: object, tenant_id: object) -> tuple[bool, set[str]]:
    async with tenant_tx(pool, tenant_id, readonly=True) as conn:  # type: ignore[arg-type]
        in_recovery = await conn.fetchval("SELECT pg_is_in_recovery()")
        names = {c.name for c in await collections.list_collections(conn, None, 100)}
    return in_recovery, names


async def test_a_caught_up_replica_serves_tenant_reads_with_row_level_security(pool, replica_pool, make_tenant):
    t, other = await make_tenant(), await make_tenant()
    await _new_collection(pool, t.id, "replicated")
    rs = _replica_set(pool, replica_pool)
    await eventually(lambda: _healthy(rs), "the replica to be checked healthy")
    replica = rs.replicas[0]
    assert replica.state == "ok" and replica.lag_s is not None and replica.lag_s < 60

    route = await rs.read_pool(t.id)
    assert isinstance(route, ReplicaRoute) and route.replica is replica

    async def replicated() -> bool:
        in_recovery, names = await _names_via(route, t.id)
        assert in_recovery  # the connection really is the standby's
        return names == {"replicated"}

    await eventually(replicated, "the collection to reach the replica")
    assert await _names_via(route, other.id) == (True, set())  # RLS on the standby too

    # An idle primary is no lag: checks without writes in between keep the replica in use.
    for _ in range(3):
        assert await _healthy(rs)


async def test_a_lagging_replica_is_skipped_until_it_catches_up(pool, replica_pool, replica_admin_url, make_tenant):
    t = await make_tenant()
    rs = _replica_set(pool, replica_pool, max_lag_s=0.3)
    await eventually(lambda: _healthy(rs), "the replica to be checked healthy")
    replica = rs.replicas[0]

    async with replay_paused(replica_admin_url):
        await _new_collection(pool, t.id, "written-while-paused")

        async def skipped() -> bool:
            return not await _healthy(rs)

        await eventually(skipped, "the paused replica to be skipped")
        assert replica.state.startswith("lagging") and replica.lag_s is not None and replica.lag_s > 0.3
        assert rs.pick() is None
        assert await rs.read_pool(t.id) is pool  # the primary
        assert await _names_via(await rs.read_pool(t.id), t.id) == (False, {"written-while-paused"})

    await eventually(lambda: _healthy(rs), "the replica to catch up and be used again")
    route = await rs.read_pool(t.id)
    assert isinstance(route, ReplicaRoute)
    assert await _names_via(route, t.id) == (True, {"written-while-paused"})


async def test_an_unreachable_replica_is_skipped_and_a_read_falls_back_to_the_primary(pool, make_tenant):
    t = await make_tenant()
    await _new_collection(pool, t.id, "on-primary")
    down = await create_pool(f"postgresql://quarry_app@127.0.0.1:{free_port()}/quarry_test", min_size=0,
                             max_size=2, acquire_timeout_s=2, metrics_name="replica0")
    try:
        rs = _replica_set(pool, down)
        await rs.check()
        replica = rs.replicas[0]
        assert not replica.healthy and replica.state.startswith("unreachable")
        assert await rs.read_pool(t.id) is pool

        # A replica that goes down between two checks: the read that finds out is served by the primary.
        replica.healthy = True
        assert await _names_via(ReplicaRoute(rs, replica), t.id) == (False, {"on-primary"})
        assert not replica.healthy
    finally:
        await down.close()


async def test_the_primary_itself_is_not_taken_for_a_replica(pool):
    rs = ReplicaSet(pool, [Replica("replica0", pool)], None, max_lag_s=60, interval_s=0.05)
    await rs.check()
    assert not rs.replicas[0].healthy and "not a standby" in rs.replicas[0].state


async def test_a_tenant_that_wrote_reads_from_the_primary_until_the_replica_replayed_the_write(
    pool, replica_pool, replica_admin_url, make_tenant, settings
):
    writer, bystander = await make_tenant(), await make_tenant()
    redis = Redis.from_url(settings.redis_url)
    marks = WriteMarks(RedisGuard(redis, timeout_s=2), ttl_s=60)
    try:
        rs = _replica_set(pool, replica_pool, marks=marks)
        await eventually(lambda: _healthy(rs), "the replica to be checked healthy")
        async with replay_paused(replica_admin_url):
            await _new_collection(pool, writer.id, "just-written")
            await marks.mark(writer.id)
            for _ in range(3):  # the replica stays healthy (bound 60 s) but has not replayed the write
                assert await _healthy(rs)
                assert await rs.read_pool(writer.id) is pool
                assert isinstance(await rs.read_pool(bystander.id), ReplicaRoute)
            assert await _names_via(await rs.read_pool(writer.id), writer.id) == (False, {"just-written"})

        async def replica_again() -> bool:
            await rs.check()
            return isinstance(await rs.read_pool(writer.id), ReplicaRoute)

        await eventually(replica_again, "the writer's reads to return to the replica")
        assert await _names_via(await rs.read_pool(writer.id), writer.id) == (True, {"just-written"})
    finally:
        await redis.aclose()


async def test_without_redis_the_marks_are_unknown_and_reads_go_to_the_primary(pool, replica_pool, make_tenant):
    t = await make_tenant()
    redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    marks = WriteMarks(RedisGuard(redis, timeout_s=0.5), ttl_s=60)
    try:
        assert await marks.last_write(t.id) == math.inf
        await marks.mark(t.id)  # swallowed: Redis is down
        rs = _replica_set(pool, replica_pool, marks=marks)
        await eventually(lambda: _healthy(rs), "the replica to be checked healthy")
        assert await rs.read_pool(t.id) is pool
    finally:
        await redis.aclose()
