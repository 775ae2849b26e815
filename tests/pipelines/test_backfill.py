"""Embedding backfill to a second embedder of another dimension (an OpenAI-compatible fake):
side by side, search answering during and after, atomic switch, index built, resumable."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from pipelines.backfill import backfill_collection
from pipelines.embedding import spec_of
from pipelines.sync import sync_source
from rag.embedders import OpenAIEmbedder
from storage.repositories import embedders as embedder_repo
from storage.repositories.search import SEARCH_SETTINGS, search_chunks
from storage.tenancy import tenant_tx
from tests.ingest_helpers import run_jobs, upload_text
from tests.rag.fake_openai import FakeOpenAI

TOPICS = ["granite quarries in Cornwall", "basalt columns on the coast", "chalk cliffs and fossils",
          "slate roofs of Wales", "marble statues and polish", "sandstone erosion in deserts"]


@pytest.fixture
async def synced(make_tenant, make_source, make_deps, sync_settings, tenant_dir):
    tenant = await make_tenant()
    folder = tenant_dir(tenant.id)
    for i, topic in enumerate(TOPICS):
        (folder / f"{i}.md").write_text(f"# {topic.title()}\n\nThis note is about {topic}. " * 3)
    source = await make_source(tenant.id, "folder", {"path": str(folder)})
    run = (await sync_source(make_deps(sync_settings), tenant.id, source.id)).run
    assert run.added == len(TOPICS)
    return tenant, source


def _fake_embedder(fake: FakeOpenAI, retries: int = 0) -> OpenAIEmbedder:
    return OpenAIEmbedder(base_url=fake.base_url, model="fake-64", dim=64, max_retries=retries, batch_size=2,
                          max_concurrency=1, backoff_base_s=0.01)


async def _search(pool, tenant_id, collection_id, embedder, text):
    vector = (await embedder.embed([text]))[0]
    async with tenant_tx(pool, tenant_id, readonly=True, local_settings=SEARCH_SETTINGS) as conn:
        return await search_chunks(conn, query_text=text, query_vector=vector, embedder=embedder.name,
                                   dim=embedder.dim, mode="vector", collection_ids=[collection_id], metadata=None,
                                   k=3, offset=0, candidates=50)


async def test_backfill_switches_with_search_answering(synced, pool, settings, admin_url, owner_pool, worker_ctx):
    tenant, source = synced
    collection_id = source.collection_id
    with FakeOpenAI(dim=64, delay_s=0.05) as fake:
        new = _fake_embedder(fake)
        task = asyncio.create_task(backfill_collection(
            pool, admin_url, tenant_id=tenant.id, collection_id=collection_id, embedder=new,
            spec=spec_of(new, base_url=fake.base_url), batch_size=2))
        answered = 0
        async with AsyncTestClient(app=create_app(settings)) as api:
            while not task.done():  # search keeps answering from the active (old) embedder
                r = await api.post("/v1/search", json={"query": "basalt columns", "collections": [str(collection_id)]},
                                   headers=tenant.headers)
                assert r.status_code == 200, r.text
                assert r.json()["hits"] and "basalt" in r.json()["hits"][0]["text"].lower()
                answered += 1
                await asyncio.sleep(0.02)
            report = await task
            assert answered >= 2
            r = await api.post("/v1/search", json={"query": "basalt columns", "collections": [str(collection_id)]},
                               headers=tenant.headers)
            assert r.status_code == 200 and r.json()["hits"]
        assert report.switched and report.embedded == report.total_chunks > 0

        async with tenant_tx(pool, tenant.id, readonly=True) as conn:
            active = await embedder_repo.active_embedders(conn, [collection_id])
            counts = dict(await conn.fetch(
                "SELECT embedder, count(*) FROM embeddings WHERE collection_id = $1 GROUP BY embedder", collection_id))
        assert active[collection_id] == ("openai:fake-64", 64)
        assert counts["openai:fake-64"] == counts["minilm-l6-v2"] == report.total_chunks  # side by side
        async with owner_pool.acquire() as conn:
            valid = await conn.fetchval("""SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                                           WHERE c.relname = $1""", report.index)
        assert valid is True

        # Search with the new embedder (the query embedded by it, 64-d rows) finds the right note.
        hits = await _search(pool, tenant.id, collection_id, new, "basalt columns on the coast")
        assert hits and "basalt" in hits[0].text.lower()
        # And the old rows still answer for a client not switched yet.
        old_hits = await _search(pool, tenant.id, collection_id, worker_ctx["embedder"], "basalt columns")
        assert old_hits and "basalt" in old_hits[0].text.lower()
        await new.aclose()


async def test_interrupted_backfill_resumes(synced, pool, admin_url):
    tenant, source = synced
    with FakeOpenAI(dim=64) as fake:
        flaky = _fake_embedder(fake)
        spec = spec_of(flaky, base_url=fake.base_url)
        served = 0

        # Two batches succeed, then the provider fails: the backfill stops, nothing switched.
        original = flaky.embed

        async def failing_after_two(texts):
            nonlocal served
            if served >= 2:
                raise RuntimeError("provider down")
            served += 1
            return await original(texts)

        flaky.embed = failing_after_two  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="provider down"):
            await backfill_collection(pool, admin_url, tenant_id=tenant.id, collection_id=source.collection_id,
                                      embedder=flaky, spec=spec, batch_size=2)
        async with tenant_tx(pool, tenant.id, readonly=True) as conn:
            row = await conn.fetchrow("SELECT status, embedded, total_chunks FROM embedding_backfills "
                                      "WHERE collection_id = $1", source.collection_id)
            active = await conn.fetchval("SELECT active_embedder FROM collections WHERE id = $1", source.collection_id)
        assert row["status"] == "failed" and row["embedded"] == 4 and active == "minilm-l6-v2"

        fake.requests.clear()
        resumed = _fake_embedder(fake)
        report = await backfill_collection(pool, admin_url, tenant_id=tenant.id, collection_id=source.collection_id,
                                           embedder=resumed, spec=spec, batch_size=2)
        sent = sum(len(r.json()["input"]) for r in fake.requests)
        assert report.switched and report.embedded == row["total_chunks"] - 4 == sent
        async with tenant_tx(pool, tenant.id, readonly=True) as conn:
            rows = await conn.fetch("SELECT status, embedded FROM embedding_backfills WHERE collection_id = $1",
                                    source.collection_id)
        assert [(r["status"], r["embedded"]) for r in rows] == [("completed", row["total_chunks"])]
        await resumed.aclose()
        await flaky.aclose()


async def test_sync_after_switch_uses_the_active_embedder(synced, pool, admin_url, make_deps, sync_settings,
                                                          folder_root):
    tenant, source = synced
    with FakeOpenAI(dim=64) as fake:
        new = _fake_embedder(fake)
        await backfill_collection(pool, admin_url, tenant_id=tenant.id, collection_id=source.collection_id,
                                  embedder=new, spec=spec_of(new, base_url=fake.base_url), batch_size=8)
        (folder_root / str(tenant.id) / "new.md").write_text("Obsidian is volcanic glass.")
        settings = msgspec.structs.replace(sync_settings, openai_max_retries=0)
        run = (await sync_source(make_deps(settings), tenant.id, source.id)).run
        assert run.added == 1, run.errors
        async with tenant_tx(pool, tenant.id, readonly=True) as conn:
            embedders = {r["embedder"]: r["dim"] for r in await conn.fetch(
                """SELECT e.embedder, e.dim FROM embeddings e JOIN chunks c ON c.id = e.chunk_id
                   JOIN documents d ON d.id = c.document_id WHERE d.uri = 'new.md' AND d.source_id = $1""",
                source.id)}
        assert embedders == {"openai:fake-64": 64}
        await new.aclose()


async def test_uploads_and_api_search_after_switch_use_the_active_embedder(synced, pool, settings, admin_url,
                                                                          worker_ctx):
    tenant, source = synced
    collection_id = source.collection_id
    with FakeOpenAI(dim=64) as fake:
        new = _fake_embedder(fake)
        await backfill_collection(pool, admin_url, tenant_id=tenant.id, collection_id=collection_id,
                                  embedder=new, spec=spec_of(new, base_url=fake.base_url), batch_size=8)
        async with tenant_tx(pool, tenant.id) as conn:  # only the new embedder's rows are left
            assert await embedder_repo.drop_embeddings(conn, collection_id, "minilm-l6-v2") > 0
        other = await new_collection_direct(pool, tenant.id, "still-default")
        fake.requests.clear()
        async with AsyncTestClient(app=create_app(settings)) as api:
            # An upload into the switched collection is embedded by the active embedder.
            doc = await upload_text(api, tenant.headers, collection_id, "Pumice is a light volcanic rock that floats.")
            await upload_text(api, tenant.headers, other, "Granite kitchen counters resist heat.")
            await run_jobs(settings, worker_ctx)
            async with tenant_tx(pool, tenant.id, readonly=True) as conn:
                rows = await conn.fetch("""SELECT e.embedder, e.dim FROM embeddings e JOIN chunks c ON c.id = e.chunk_id
                                           WHERE c.document_id = $1""", uuid.UUID(doc["document_id"]))
            assert {(r["embedder"], r["dim"]) for r in rows} == {("openai:fake-64", 64)}

            # The query is embedded by the collection's embedder and matched against its rows.
            before = len(fake.requests)
            r = await api.post("/v1/search", json={"query": "basalt columns on the coast", "mode": "vector",
                                                  "collections": [str(collection_id)]}, headers=tenant.headers)
            assert r.status_code == 200, r.text
            assert "basalt" in r.json()["hits"][0]["text"].lower()
            assert [q.json()["input"] for q in fake.requests[before:]] == [["basalt columns on the coast"]]

            # A tenant-wide search spans both embedders: each collection answers with its own.
            r = await api.post("/v1/search", json={"query": "volcanic rock that floats", "k": 20},
                               headers=tenant.headers)
            assert r.status_code == 200, r.text
            hits = r.json()["hits"]
            assert {h["collection_id"] for h in hits} == {str(collection_id), other}
            assert "pumice" in hits[0]["text"].lower()
            scores = [h["score"] for h in hits]
            assert scores == sorted(scores, reverse=True)
        await new.aclose()


async def new_collection_direct(pool, tenant_id, name: str) -> str:
    async with tenant_tx(pool, tenant_id) as conn:
        return str(await conn.fetchval(
            "INSERT INTO collections (tenant_id, name) VALUES ($1, $2) RETURNING id", tenant_id, name))
