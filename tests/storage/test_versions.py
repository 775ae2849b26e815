"""The in-memory collection versions (storage.caches.versions): served from memory, dropped by
the NOTIFY of every kind of change at commit, never kept from a read that overlapped a change,
and not trusted while the LISTEN connection is down."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from api.app import app_database_url
from storage.caches import versions as versions_module
from storage.caches.versions import VersionMap
from storage.repositories import collections
from storage.tenancy import tenant_tx


@pytest.fixture
async def version_map(settings):
    url = app_database_url(settings)
    vmap = VersionMap(lambda: asyncpg.connect(url), ping_s=0.2)
    vmap.start()
    await wait_for(lambda: vmap.live)
    yield vmap
    await vmap.stop()


@pytest.fixture
def reads(monkeypatch):
    """Counts the map's reads from Postgres."""
    count = [0]
    real = versions_module.read_versions

    async def counting(*args, **kwargs):
        count[0] += 1
        return await real(*args, **kwargs)

    monkeypatch.setattr(versions_module, "read_versions", counting)
    return count


async def wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_versions_come_from_memory_until_a_change_commits(pool, make_tenant, version_map, reads):
    tenant = await make_tenant()
    async with tenant_tx(pool, tenant.id) as conn:
        a = await collections.create_collection(conn, tenant.id, "a", "")
        b = await collections.create_collection(conn, tenant.id, "b", "")
    await version_map.sync()
    everything = await version_map.versions(pool, tenant.id, None)
    assert everything == ",".join(sorted(f"{c.id}:1" for c in (a, b)))
    assert await version_map.versions(pool, tenant.id, None) == everything
    assert await version_map.versions(pool, tenant.id, [b.id, a.id]) == everything
    assert await version_map.versions(pool, tenant.id, [a.id, b.id]) == everything  # same scope, sorted
    assert reads[0] == 2  # one per scope

    # An uncommitted change sends nothing; its commit drops the tenant's entries.
    async with tenant_tx(pool, tenant.id) as conn:
        await collections.bump_version(conn, a.id)
        await version_map.sync()
        assert await version_map.versions(pool, tenant.id, None) == everything
    await version_map.sync()
    changed = await version_map.versions(pool, tenant.id, None)
    assert f"{a.id}:2" in changed and reads[0] == 3
    assert await version_map.versions(pool, tenant.id, [a.id]) == f"{a.id}:2"

    # Every kind of change notifies: embedder switch, new collection, deleted collection.
    for change in (
        lambda conn: conn.execute("UPDATE collections SET active_embedder = 'other' WHERE id = $1", b.id),
        lambda conn: collections.create_collection(conn, tenant.id, "c", ""),
        lambda conn: collections.delete_collection(conn, a.id),
    ):
        before = reads[0]
        await version_map.versions(pool, tenant.id, None)
        assert reads[0] == before  # in memory
        async with tenant_tx(pool, tenant.id) as conn:
            await change(conn)
        await version_map.sync()
        await version_map.versions(pool, tenant.id, None)
        assert reads[0] == before + 1, "the change did not drop the tenant's versions"
    assert str(a.id) not in await version_map.versions(pool, tenant.id, None)


async def test_other_tenants_keep_their_entries(pool, make_tenant, version_map, reads):
    one, two = await make_tenant(), await make_tenant()
    for t in (one, two):
        async with tenant_tx(pool, t.id) as conn:
            await collections.create_collection(conn, t.id, "docs", "")
    await version_map.sync()
    for t in (one, two):
        await version_map.versions(pool, t.id, None)
    async with tenant_tx(pool, one.id) as conn:
        (cid,) = [c.id for c in await collections.list_collections(conn, limit=10, after=None)]
        await collections.bump_version(conn, cid)
    await version_map.sync()
    before = reads[0]
    await version_map.versions(pool, two.id, None)
    assert reads[0] == before
    await version_map.versions(pool, one.id, None)
    assert reads[0] == before + 1


async def test_a_read_that_overlaps_a_change_is_not_kept(pool, make_tenant, version_map, monkeypatch):
    tenant = await make_tenant()
    real = versions_module.read_versions
    calls = [0]

    async def read_then_change(pool_, tenant_id, ids):
        calls[0] += 1
        value = await real(pool_, tenant_id, ids)
        if calls[0] == 1:
            version_map.changed(tenant_id)  # the notification arrives while this read is out
        return value

    monkeypatch.setattr(versions_module, "read_versions", read_then_change)
    await version_map.versions(pool, tenant.id, None)
    await version_map.versions(pool, tenant.id, None)
    assert calls[0] == 2  # the first read was not kept
    await version_map.versions(pool, tenant.id, None)
    assert calls[0] == 2


async def test_a_lost_listen_connection_stops_the_map_answering(pool, owner_pool, make_tenant, version_map, reads):
    tenant = await make_tenant()
    await version_map.versions(pool, tenant.id, None)
    await version_map.versions(pool, tenant.id, None)
    assert reads[0] == 1
    async with owner_pool.acquire() as conn:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE pid = $1",
            version_map._conn.get_server_pid())
    assert killed == 1
    await wait_for(lambda: not version_map.live)
    # Changes made while nobody listens are not missed: the map reads Postgres meanwhile and
    # starts empty once it listens again.
    async with tenant_tx(pool, tenant.id) as conn:
        await collections.create_collection(conn, tenant.id, "while-down", "")
    await wait_for(lambda: version_map.live)
    assert "," not in await version_map.versions(pool, tenant.id, None)  # one collection
    assert reads[0] >= 2
    before = reads[0]
    await version_map.versions(pool, tenant.id, None)
    assert reads[0] == before  # kept again
