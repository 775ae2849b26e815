"""The API with DATABASE_REPLICA_URLS pointing at a real streaming standby: searches and listings
are served by the replica, a tenant reads back its own writes at once, a lagging or stopped
replica is skipped (no errors) and used again once it has recovered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest
from prometheus_client import REGISTRY

from core.settings import Settings
from storage.replicas import ReplicaSet
from storage.repositories import collections
from storage.tenancy import tenant_tx
from tests.ingest_helpers import new_collection, upload_text
from tests.replica_helpers import eventually, replay_paused, replica_has
from tests.serving_helpers import concurrent_client


def _replica_settings(settings: Settings, replica_admin_url: str, max_lag_ms: int) -> Settings:
    return msgspec.structs.replace(settings, database_replica_urls=replica_admin_url,
                                   replica_max_lag_ms=max_lag_ms, replica_check_interval_ms=50)


def _reads(pool: str) -> float:
    return REGISTRY.get_sample_value("quarry_db_reads_total", {"pool": pool}) or 0.0


@pytest.fixture
async def replica_restored(replica_server) -> AsyncIterator[None]:
    """Whatever a test did to the replica, it is running again afterwards."""
    yield
    if replica_server.proc is None or replica_server.proc.poll() is not None:
        await asyncio.to_thread(replica_server.start)


async def _collection_names(client, headers) -> set[str]:
    r = await client.get("/v1/collections", headers=headers)
    assert r.status_code == 200, r.text
    return {c["name"] for c in r.json()["items"]}


async def _routed_to_replica(replicas: ReplicaSet, tenant_id) -> bool:
    """The tenant's next read would go to the replica (checked, healthy, past its last write)."""
    assert replicas.marks is not None
    return replicas.pick(await replicas.marks.last_write(tenant_id)) is not None


async def test_searches_and_listings_read_from_the_replica_and_a_tenant_reads_back_its_writes(
    settings, replica_admin_url, make_tenant, run_jobs, owner_pool
):
    t = await make_tenant()
    async with concurrent_client(_replica_settings(settings, replica_admin_url, 60_000)) as (client, app):
        replicas: ReplicaSet = app.state.replicas
        cid = await new_collection(client, t.headers, "library")
        doc = await upload_text(client, t.headers, cid, "The zanzibarite quokka keeps a ledger of tides.",
                                uri="quokka.txt")
        await run_jobs()
        await eventually(lambda: replica_has(replica_admin_url, "SELECT status = 'ready' FROM documents WHERE id = $1",
                                             doc["document_id"]), "the ingested document to reach the replica")
        await replicas.marks.mark(t.id)  # the ingest job's writes count as the tenant's (test shortcut)
        await eventually(lambda: _routed_to_replica(replicas, t.id), "the tenant's reads to go to the replica")

        async def search(query: str, mode: str) -> list:
            r = await client.post("/v1/search", json={"query": query, "mode": mode}, headers=t.headers)
            assert r.status_code == 200, r.text
            return r.json()["hits"]

        before = _reads("replica0")
        assert len(await search("zanzibarite", "keyword")) == 1
        assert _reads("replica0") > before

        async with replay_paused(replica_admin_url):
            # Deleted on the primary only: whatever still finds the document read the replica.
            async with owner_pool.acquire() as conn:
                assert await conn.execute("DELETE FROM documents WHERE id = $1", doc["document_id"]) == "DELETE 1"
            before = _reads("replica0")
            hits = await search("zanzibarite quokka", "hybrid")  # another query: not the cached result
            assert [h["document_id"] for h in hits][:1] == [doc["document_id"]]
            r = await client.get("/v1/documents", headers=t.headers)
            assert [d["id"] for d in r.json()["items"]] == [doc["document_id"]]
            assert await _collection_names(client, t.headers) == {"library"}
            assert _reads("replica0") >= before + 3

            # Read-your-writes: the replica cannot have these (replay is paused), yet they are listed.
            await new_collection(client, t.headers, "fresh")
            assert await _collection_names(client, t.headers) == {"library", "fresh"}
            r = await client.get("/v1/documents", headers=t.headers)
            assert r.json()["items"] == []  # the primary's view: the delete is visible too
            doc2 = await upload_text(client, t.headers, cid, "A second note about lighthouses.", uri="lighthouse.txt")
            r = await client.get("/v1/documents", headers=t.headers)
            assert [d["id"] for d in r.json()["items"]] == [doc2["document_id"]]
        await run_jobs()  # leave no queued job behind


async def test_a_lagging_replica_is_skipped_until_it_catches_up(settings, replica_admin_url, make_tenant, pool):
    t = await make_tenant()
    async with tenant_tx(pool, t.id) as conn:  # written directly: no read-your-writes mark
        await collections.create_collection(conn, t.id, "before", "")
    async with concurrent_client(_replica_settings(settings, replica_admin_url, 1_000)) as (client, app):
        replica = app.state.replicas.replicas[0]
        await eventually(lambda: _routed_to_replica(app.state.replicas, t.id), "the replica to be in use")

        async with replay_paused(replica_admin_url):
            async with tenant_tx(pool, t.id) as conn:
                await collections.create_collection(conn, t.id, "during", "")

            async def skipped() -> bool:
                return not replica.healthy

            await eventually(skipped, "the paused replica to be skipped")
            assert replica.state.startswith("lagging")
            assert await _collection_names(client, t.headers) == {"before", "during"}  # from the primary
            r = await client.get("/readyz")
            assert r.status_code == 200 and r.json()["status"] == "ready"  # a replica never makes it unready
            assert r.json()["checks"]["replicas"]["replica0"].startswith("lagging")

        async def replica_serves_again() -> bool:
            before = _reads("replica0")
            assert await _collection_names(client, t.headers) == {"before", "during"}
            return _reads("replica0") > before

        await eventually(replica_serves_again, "the caught-up replica to serve reads again")
        assert (await client.get("/readyz")).json()["checks"]["replicas"]["replica0"] == "ok"


async def test_a_stopped_replica_is_skipped_without_errors_and_used_again_when_back(
    settings, replica_admin_url, replica_server, replica_restored, make_tenant, pool
):
    t = await make_tenant()
    async with tenant_tx(pool, t.id) as conn:
        await collections.create_collection(conn, t.id, "kept", "")
    async with concurrent_client(_replica_settings(settings, replica_admin_url, 60_000)) as (client, app):
        replica = app.state.replicas.replicas[0]
        await eventually(lambda: replica_has(replica_admin_url, "SELECT count(*) = 1 FROM collections WHERE "
                                             "tenant_id = $1", t.id), "the collection to reach the replica")
        await eventually(lambda: _routed_to_replica(app.state.replicas, t.id), "the replica to be in use")
        before = _reads("replica0")
        assert await _collection_names(client, t.headers) == {"kept"}
        assert _reads("replica0") > before  # a pooled connection to the replica is open now

        await asyncio.to_thread(replica_server.stop)
        # Before any health check noticed: the read that finds the replica down falls back.
        assert await _collection_names(client, t.headers) == {"kept"}
        r = await client.post("/v1/search", json={"query": "anything"}, headers=t.headers)
        assert r.status_code == 200, r.text

        async def skipped() -> bool:
            return replica.state.startswith("unreachable")

        await eventually(skipped, "the stopped replica to be reported unreachable")
        r = await client.get("/readyz")
        assert r.status_code == 200 and r.json()["status"] == "ready"
        assert r.json()["checks"]["replicas"]["replica0"].startswith("unreachable")
        assert await _collection_names(client, t.headers) == {"kept"}

        await asyncio.to_thread(replica_server.start)

        async def replica_serves_again() -> bool:
            before = _reads("replica0")
            assert await _collection_names(client, t.headers) == {"kept"}
            return _reads("replica0") > before

        await eventually(replica_serves_again, "the restarted replica to serve reads again")


async def test_without_replicas_reads_use_the_primary_pool(client, make_tenant):
    t = await make_tenant()
    assert client.app.state.replicas is None
    before = _reads("primary")
    r = await client.get("/v1/collections", headers=t.headers)
    assert r.status_code == 200
    assert _reads("primary") == before  # no routing at all: the primary pool is used as before
