"""Caches: search results (version-key invalidation), query embeddings, principals (two tiers,
revocation across processes), and serving without Redis."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
from prometheus_client import REGISTRY

from tests.api.helpers import bearer, create_key, versions_synced
from tests.ingest_helpers import new_collection, upload_text
from tests.serving_helpers import concurrent_client

# A loaded CI machine can take longer than the production Redis deadline (250 ms); a slow call
# would then count as a miss and these tests would be about the machine, not the caches.
PATIENT = {"redis_timeout_ms": 3000}


@pytest.fixture
async def client(settings, app_client):
    async with app_client(msgspec.structs.replace(settings, **PATIENT)) as test_client:
        yield test_client


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def search(client, headers, query, **extra):
    r = await client.post("/v1/search", json={"query": query, **extra}, headers=headers)
    assert r.status_code == 200, r.text
    return r


def texts(r) -> list[str]:
    return [h["text"] for h in r.json()["hits"]]


async def test_search_results_are_cached_and_invalidated_by_changes(client, make_tenant, run_jobs):
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    await upload_text(client, t.headers, cid, "Lighthouses guide ships past the rocky cape at night.", uri="lh.txt")
    await upload_text(client, t.headers, cid, "Penguins huddle together to survive the polar winter.", uri="pg.txt")
    await run_jobs()

    first = await search(client, t.headers, "lighthouse ships", k=1)
    assert first.headers["x-cache"] == "miss" and "Lighthouses" in texts(first)[0]
    again = await search(client, t.headers, "lighthouse ships", k=1)
    assert again.headers["x-cache"] == "hit" and again.json()["hits"] == first.json()["hits"]
    # Other parameters, another entry; the collection filter too.
    assert (await search(client, t.headers, "lighthouse ships", k=2)).headers["x-cache"] == "miss"
    scoped = await search(client, t.headers, "lighthouse ships", k=1, collections=[cid])
    assert scoped.headers["x-cache"] == "miss"
    assert (await search(client, t.headers, "lighthouse ships", k=1, collections=[cid])).headers["x-cache"] == "hit"

    # Re-upload with other content: after ingestion the very same search sees the new text at once.
    await upload_text(client, t.headers, cid, "Lighthouses now use LED beacons to guide ships.", uri="lh.txt")
    await run_jobs()
    versions_synced(client)
    changed = await search(client, t.headers, "lighthouse ships", k=1)
    assert changed.headers["x-cache"] == "miss"
    assert "LED beacons" in texts(changed)[0]
    scoped = await search(client, t.headers, "lighthouse ships", k=1, collections=[cid])
    assert scoped.headers["x-cache"] == "miss" and "LED beacons" in texts(scoped)[0]

    # Delete: gone from the next search, cached or not.
    doc_id = changed.json()["hits"][0]["document_id"]
    assert (await client.delete(f"/v1/documents/{doc_id}", headers=t.headers)).status_code == 204
    versions_synced(client)
    after = await search(client, t.headers, "lighthouse ships", k=1)
    assert after.headers["x-cache"] == "miss"
    assert all(h["document_id"] != doc_id for h in after.json()["hits"])
    assert (await search(client, t.headers, "lighthouse ships", k=1)).headers["x-cache"] == "hit"

    # A new (empty) collection changes the all-collections key too; a collection-scoped key does not.
    await new_collection(client, t.headers, "more")
    versions_synced(client)
    assert (await search(client, t.headers, "lighthouse ships", k=1)).headers["x-cache"] == "miss"


async def test_cache_entries_belong_to_one_tenant(client, make_tenant, run_jobs):
    a, b = await make_tenant(), await make_tenant()
    for t, text in ((a, "Tenant A keeps the aurora borealis photographs."),
                    (b, "Tenant B keeps the aurora australis photographs.")):
        cid = await new_collection(client, t.headers)
        await upload_text(client, t.headers, cid, text)
    await run_jobs()
    ra = await search(client, a.headers, "aurora photographs")
    rb = await search(client, b.headers, "aurora photographs")
    assert rb.headers["x-cache"] == "miss"
    assert "Tenant A" in texts(ra)[0] and "Tenant B" in texts(rb)[0]
    assert "Tenant B" in texts(await search(client, b.headers, "aurora photographs"))[0]


async def test_query_embeddings_are_cached(client, make_tenant, run_jobs, settings):
    from redis.asyncio import Redis

    from storage.caches.search import SearchCache

    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    await upload_text(client, t.headers, cid, "Volcanic ash grounded flights across the region.")
    await run_jobs()
    query = f"ash and flights {time.time()}"  # never embedded before
    hits_before = counter("quarry_cache_hits_total", cache="embedding", tier="redis")
    await search(client, t.headers, query, k=1)
    redis = Redis.from_url(settings.redis_url)
    try:
        raw = await redis.get(SearchCache.embedding_key(client.app.state.embedder.name, query))
    finally:
        await redis.aclose()
    assert raw is not None and len(raw) == 4 * client.app.state.embedder.dim  # float32
    await search(client, t.headers, query, k=2)  # another result key, same query text
    assert counter("quarry_cache_hits_total", cache="embedding", tier="redis") == hits_before + 1


async def test_principal_cache_serves_repeat_requests_locally(client, make_tenant):
    t = await make_tenant()
    misses = counter("quarry_cache_misses_total", cache="principal")
    local = counter("quarry_cache_hits_total", cache="principal", tier="local")
    for _ in range(3):
        assert (await client.get("/v1/me", headers=t.headers)).status_code == 200
    assert counter("quarry_cache_misses_total", cache="principal") == misses + 1
    assert counter("quarry_cache_hits_total", cache="principal", tier="local") == local + 2


async def test_revoked_key_stops_working_on_every_process(settings, make_tenant):
    """Two app instances stand for two API worker processes sharing Redis. The local TTL is
    long here, so only the pub/sub invalidation can explain the second one noticing."""
    t = await make_tenant()
    slow = msgspec.structs.replace(settings, principal_cache_local_ttl_s=120.0, **PATIENT)
    async with concurrent_client(slow) as (one, app_one), concurrent_client(slow) as (two, app_two):
        async with asyncio.timeout(5):
            await asyncio.gather(app_one.state.serving.bus.subscribed.wait(),
                                 app_two.state.serving.bus.subscribed.wait())
        member = await create_key(one, t.headers, "member")
        headers = bearer(member["key"])
        for c in (one, two):
            assert (await c.get("/v1/me", headers=headers)).status_code == 200  # cached in both now
        r = await one.delete(f"/v1/admin/keys/{member['api_key']['id']}", headers=t.headers)
        assert r.status_code == 204
        assert (await one.get("/v1/me", headers=headers)).status_code == 401
        deadline = time.monotonic() + 3
        while (status := (await two.get("/v1/me", headers=headers)).status_code) == 200:
            assert time.monotonic() < deadline, "the other process still accepts the revoked key"
            await asyncio.sleep(0.05)
        assert status == 401


async def test_revocation_that_bypasses_the_api_takes_effect_within_the_ttls(
    settings, app_client, make_tenant, owner_pool
):
    """A key revoked straight in the database (no invalidation message): the caches forget it
    within local TTL + Redis TTL."""
    t = await make_tenant()
    short = msgspec.structs.replace(settings, principal_cache_local_ttl_s=0.5, principal_cache_redis_ttl_s=1, **PATIENT)
    async with app_client(short) as client:
        member = await create_key(client, t.headers, "member")
        headers = bearer(member["key"])
        assert (await client.get("/v1/me", headers=headers)).status_code == 200
        async with owner_pool.acquire() as conn:
            await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", member["api_key"]["id"])
        assert (await client.get("/v1/me", headers=headers)).status_code == 200  # still cached: expected
        started = time.monotonic()
        while (await client.get("/v1/me", headers=headers)).status_code == 200:
            assert time.monotonic() - started < 3.0, "revocation did not take effect within the TTLs"
            await asyncio.sleep(0.1)


async def test_redis_down_reads_still_succeed(settings, app_client, make_tenant, run_jobs, servers):
    t = await make_tenant()
    async with app_client(msgspec.structs.replace(settings, **PATIENT)) as client:
        cid = await new_collection(client, t.headers)
        await upload_text(client, t.headers, cid, "Glaciers carve U-shaped valleys over millennia.")
        await run_jobs()
        cached = await search(client, t.headers, "glacier valleys")
        assert (await search(client, t.headers, "glacier valleys")).headers["x-cache"] == "hit"
        servers.valkey.stop()
        try:
            started = time.monotonic()
            # The principal and the earlier result are in this process's tier: still served.
            r = await search(client, t.headers, "glacier valleys")
            assert r.headers["x-cache"] == "hit" and r.json()["hits"] == cached.json()["hits"]
            # A new query misses both tiers (Redis unreachable) and is served from Postgres.
            r = await search(client, t.headers, "new query while redis is down")
            assert r.status_code == 200 and r.headers["x-cache"] == "miss"
            assert (await client.get(f"/v1/collections/{cid}", headers=t.headers)).status_code == 200
            assert (await client.get("/v1/documents", headers=t.headers)).status_code == 200
            # A key never seen before is resolved from Postgres.
            other = await make_tenant()
            assert (await client.get("/v1/me", headers=other.headers)).status_code == 200
            r = await client.get("/readyz")
            assert r.status_code == 200 and r.json()["status"] == "degraded", r.text
            assert time.monotonic() - started < 10  # short timeouts, no hang
        finally:
            servers.valkey.start()
        deadline = time.monotonic() + 15
        while (await client.get("/readyz")).json()["status"] != "ready":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        while (await search(client, t.headers, "glacier valleys")).headers["x-cache"] != "hit":
            assert time.monotonic() < deadline, "the cache did not come back with Redis"
            await asyncio.sleep(0.2)
