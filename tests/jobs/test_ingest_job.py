"""The ingestion job called directly (and once in a real worker process that gets SIGKILLed).

Documents are put in place the way the API does it (bytes in the blob store, a row through
`register_upload`), bypassing upload validation, then `jobs.ingest.ingest_document` runs with
the session's worker resources.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from arq import Retry
from arq.connections import RedisSettings, create_pool
from fpdf import FPDF
from pypdf import PdfReader, PdfWriter

from core.errors import Unavailable
from jobs.ingest import enqueue_ingest, ingest_document, ingest_job_id
from jobs.limits import LEASE_S, acquire_slot, hold_slot, release_slot, renew_slot
from pipelines.embedding import EmbedderResolver
from rag.parsing import FORMATS
from storage.repositories import documents
from storage.tenancy import tenant_tx
from tests.jobs.conftest import new_collection

LONG_TEXT = "\n\n".join(
    f"Section {i}. The lighthouse on cape {name} was automated in {1950 + i}; its keeper kept a "
    f"log of storms, passing ships and the migrating {bird} that rested on the gallery rail. "
    "Every entry records the wind, the visibility and the state of the lamp. " * 2
    for i, (name, bird) in enumerate([("Wrath", "puffins"), ("Clear", "gannets"), ("Farewell", "terns"),
                                      ("Horn", "petrels")])
)


def make_pdf(text: str) -> bytes:
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    pdf.add_page()
    pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


def encrypted_pdf() -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf("Salaries of the board, strictly private."))))
    writer.encrypt(user_password="pw")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@dataclass
class Doc:
    tenant_id: uuid.UUID
    collection_id: uuid.UUID
    id: uuid.UUID
    content_hash: str
    fmt: str

    def args(self) -> tuple[str, str, str, str]:
        return str(self.tenant_id), str(self.id), self.content_hash, self.fmt


async def add_document(pool, blobs, tenant_id, collection_id, data: bytes, fmt: str, uri: str | None = None) -> Doc:
    blob = await blobs.save_bytes(tenant_id, data)
    async with tenant_tx(pool, tenant_id) as conn:
        doc, _ = await documents.register_upload(
            conn, tenant_id=tenant_id, collection_id=collection_id, title="", uri=uri, mime_type=FORMATS[fmt],
            content_hash=blob.sha256, size_bytes=blob.size, metadata={},
        )
    return Doc(tenant_id, collection_id, doc.id, blob.sha256, fmt)


async def state(pool, doc: Doc) -> dict[str, Any]:
    """The document row plus what the index holds for it."""
    async with tenant_tx(pool, doc.tenant_id, readonly=True) as conn:
        row = await documents.get_document(conn, doc.id)
        chunks = await conn.fetch("SELECT id, ord FROM chunks WHERE document_id = $1 ORDER BY ord", doc.id)
        embeddings = await conn.fetchval(
            "SELECT count(*) FROM embeddings e JOIN chunks c ON c.id = e.chunk_id WHERE c.document_id = $1", doc.id)
    return {"status": row.status, "error": row.error, "attempts": row.attempts, "chunk_count": row.chunk_count,
            "chunks": len(chunks), "ords": [c["ord"] for c in chunks], "chunk_ids": [c["id"] for c in chunks],
            "embeddings": embeddings}


def blob_exists(ctx, doc: Doc) -> bool:
    return ctx["blobs"].path_for(doc.tenant_id, doc.content_hash).exists()


def with_embedder(ctx: dict[str, Any], embedder: Any) -> dict[str, Any]:
    """The worker's resources with `embedder` standing in for the default (same name)."""
    return dict(ctx, embedder=embedder, embedders=EmbedderResolver(embedder, ctx["settings"]))


class BrokenEmbedder:
    """The real embedder's identity, but every call fails like a remote service that is down."""

    def __init__(self, real: Any) -> None:
        self.name, self.dim, self.max_tokens = real.name, real.dim, real.max_tokens
        self.calls = 0

    async def embed(self, texts: Any) -> Any:
        self.calls += 1
        raise Unavailable("embedding service unavailable (HTTP 503)")

    async def aclose(self) -> None:
        pass


# --- content problems -----------------------------------------------------------------------


@pytest.mark.parametrize(("data", "needle"), [
    (b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 9 0 R >>\nendobj\ntrailer << /Root 1 0 R >>\n%%EOF", "corrupt"),
    (b"%PDF-1.4\n" + os.urandom(600), "corrupt"),
    (encrypted_pdf(), "encrypted"),
])
async def test_unparseable_pdf_fails_at_once(ctx, pool, tenant, data, needle):
    doc = await add_document(pool, ctx["blobs"], *tenant, data, "pdf")
    result = await ingest_document(ctx, *doc.args())
    assert result["status"] == "failed"
    after = await state(pool, doc)
    assert after["status"] == "failed" and needle in after["error"].lower(), after["error"]
    assert after["attempts"] == 1  # content problems are not retried
    assert after["chunks"] == after["embeddings"] == after["chunk_count"] == 0
    assert not blob_exists(ctx, doc)


async def test_missing_upload_fails_the_document(ctx, pool, tenant):
    doc = await add_document(pool, ctx["blobs"], *tenant, b"Bytes that will vanish.", "txt")
    ctx["blobs"].delete(doc.tenant_id, doc.content_hash)
    assert (await ingest_document(ctx, *doc.args()))["status"] == "failed"
    after = await state(pool, doc)
    assert after["status"] == "failed" and "missing" in after["error"]


# --- transient failures -----------------------------------------------------------------------


async def test_transient_failure_retries_with_backoff_then_fails(ctx, pool, tenant, settings):
    doc = await add_document(pool, ctx["blobs"], *tenant, LONG_TEXT.encode(), "txt")
    broken = with_embedder(ctx, BrokenEmbedder(ctx["embedder"]))
    defers = []
    for attempt in range(1, settings.ingest_max_tries):
        with pytest.raises(Retry) as raised:
            await ingest_document(broken, *doc.args())
        defers.append(raised.value.defer_score / 1000)
        after = await state(pool, doc)
        assert after["status"] == "queued" and after["attempts"] == attempt
        assert after["error"] == "retrying: embedding service unavailable (HTTP 503)"
        assert after["chunks"] == after["embeddings"] == 0
        assert blob_exists(ctx, doc)  # kept for the next attempt
    assert [2 ** a <= d <= 2 ** a + 1 for a, d in enumerate(defers, 1)] == [True] * len(defers), defers

    result = await ingest_document(broken, *doc.args())  # the last allowed attempt
    assert result == {"status": "failed", "error": "embedding service unavailable (HTTP 503)"}
    after = await state(pool, doc)
    assert after["status"] == "failed" and after["attempts"] == settings.ingest_max_tries
    assert after["error"] == "embedding service unavailable (HTTP 503)"
    assert after["chunks"] == after["embeddings"] == after["chunk_count"] == 0
    assert not blob_exists(ctx, doc)
    assert broken["embedder"].calls == settings.ingest_max_tries


async def test_retry_after_transient_failure_succeeds(ctx, pool, tenant):
    doc = await add_document(pool, ctx["blobs"], *tenant, LONG_TEXT.encode(), "txt")
    with pytest.raises(Retry):
        await ingest_document(with_embedder(ctx, BrokenEmbedder(ctx["embedder"])), *doc.args())
    result = await ingest_document(ctx, *doc.args())
    after = await state(pool, doc)
    assert result["status"] == "ready" and after["status"] == "ready" and after["error"] is None
    assert after["attempts"] == 2
    assert after["chunks"] == after["embeddings"] == after["chunk_count"] == result["chunks"] > 1


# --- stale jobs and idempotency -----------------------------------------------------------------


async def test_job_for_stale_content_does_nothing(ctx, pool, tenant):
    doc = await add_document(pool, ctx["blobs"], *tenant, b"The current version of the file.", "txt", uri="f.txt")
    before = await state(pool, doc)
    stale = await ctx["blobs"].save_bytes(doc.tenant_id, b"An older version of the file.")
    result = await ingest_document(ctx, str(doc.tenant_id), str(doc.id), stale.sha256, "txt")
    assert result["status"] == "skipped"
    assert await state(pool, doc) == before  # not claimed, not counted as an attempt
    assert before["status"] == "queued" and before["attempts"] == 0
    assert blob_exists(ctx, doc)  # the current version's bytes stay for its own job
    assert not ctx["blobs"].path_for(doc.tenant_id, stale.sha256).exists()  # the stale bytes are dropped

    result = await ingest_document(ctx, *doc.args())
    assert result["status"] == "ready"


async def test_content_replaced_during_the_job_is_not_written(ctx, pool, tenant):
    doc = await add_document(pool, ctx["blobs"], *tenant, LONG_TEXT.encode(), "txt", uri="notes.txt")
    newer: dict[str, Doc] = {}

    class ReplacingEmbedder:
        """Embeds for real, but the document gets new content while it does."""

        name, dim, max_tokens = ctx["embedder"].name, ctx["embedder"].dim, ctx["embedder"].max_tokens

        async def embed(self, texts):
            newer["doc"] = await add_document(pool, ctx["blobs"], doc.tenant_id, doc.collection_id,
                                              b"Completely new notes.", "txt", uri="notes.txt")
            return await ctx["embedder"].embed(texts)

    result = await ingest_document(with_embedder(ctx, ReplacingEmbedder()), *doc.args())
    assert result["status"] == "skipped"
    assert newer["doc"].id == doc.id and newer["doc"].content_hash != doc.content_hash
    after = await state(pool, doc)
    assert after["status"] == "queued" and after["chunks"] == after["embeddings"] == 0
    assert not blob_exists(ctx, doc) and blob_exists(ctx, newer["doc"])
    assert (await ingest_document(ctx, *newer["doc"].args()))["status"] == "ready"
    assert (await state(pool, doc))["chunk_count"] == 1


async def test_running_a_job_again_changes_nothing(ctx, pool, tenant, owner_pool):
    doc = await add_document(pool, ctx["blobs"], *tenant, LONG_TEXT.encode(), "txt")
    first = await ingest_document(ctx, *doc.args())
    done = await state(pool, doc)
    assert first["status"] == "ready" and done["chunks"] == done["embeddings"] == done["chunk_count"] > 1
    assert done["ords"] == list(range(done["chunks"]))

    again = await ingest_document(ctx, *doc.args())
    assert again["status"] == "skipped"
    assert await state(pool, doc) == done

    # Even when the row is claimable again (as after a crash between claim and write), a rerun
    # swaps the chunks: same count, new rows, no duplicates.
    async with owner_pool.acquire() as conn:
        await conn.execute("UPDATE documents SET status = 'processing' WHERE id = $1", doc.id)
    await ctx["blobs"].save_bytes(doc.tenant_id, LONG_TEXT.encode())
    assert (await ingest_document(ctx, *doc.args()))["status"] == "ready"
    rerun = await state(pool, doc)
    assert (rerun["chunks"], rerun["embeddings"], rerun["chunk_count"], rerun["ords"]) == (
        done["chunks"], done["embeddings"], done["chunk_count"], done["ords"])
    assert not set(rerun["chunk_ids"]) & set(done["chunk_ids"])


async def test_shared_bytes_are_kept_until_the_last_document_is_done(ctx, pool, tenant):
    tenant_id, first_collection = tenant
    second_collection = await new_collection(pool, tenant_id)
    a = await add_document(pool, ctx["blobs"], tenant_id, first_collection, b"Shared bytes.", "txt")
    b = await add_document(pool, ctx["blobs"], tenant_id, second_collection, b"Shared bytes.", "txt")
    assert a.content_hash == b.content_hash and a.id != b.id
    assert (await ingest_document(ctx, *a.args()))["status"] == "ready"
    assert blob_exists(ctx, b)
    assert (await ingest_document(ctx, *b.args()))["status"] == "ready"
    assert not blob_exists(ctx, b)


# --- per-tenant concurrency cap ------------------------------------------------------------------


async def test_per_tenant_cap(ctx, pool, make_tenant, settings, redis):
    capped = dict(ctx, settings=msgspec.structs.replace(settings, ingest_concurrency_per_tenant=1))
    busy, other = await make_tenant(), await make_tenant()
    busy_doc = await add_document(pool, ctx["blobs"], busy.id, await new_collection(pool, busy.id),
                                  b"Waits for a free slot.", "txt")
    other_doc = await add_document(pool, ctx["blobs"], other.id, await new_collection(pool, other.id),
                                   b"Another tenant is not held up.", "txt")
    key = f"quarry:ingest:slots:{busy.id}"
    assert await acquire_slot(redis, str(busy.id), "first-job", 1)
    try:
        with pytest.raises(Retry) as raised:
            await ingest_document(capped, *busy_doc.args())
        assert 0.2 <= raised.value.defer_score / 1000 <= 0.5  # soon: slots free up quickly in a batch
        waiting = await state(pool, busy_doc)
        assert waiting["status"] == "queued" and waiting["attempts"] == 0  # not even claimed
        assert await redis.zrange(key, 0, -1) == [b"first-job"]

        assert (await ingest_document(capped, *other_doc.args()))["status"] == "ready"
    finally:
        await release_slot(redis, str(busy.id), "first-job")
    assert (await ingest_document(capped, *busy_doc.args()))["status"] == "ready"
    # Every job gives its slot back, also when it fails.
    assert await redis.zcard(key) == 0
    failing = await add_document(pool, ctx["blobs"], busy.id, busy_doc.collection_id, b"%PDF-1.4 junk", "pdf")
    assert (await ingest_document(capped, *failing.args()))["status"] == "failed"
    assert await redis.zcard(key) == 0


async def test_slots_not_renewed_within_the_lease_are_reclaimed(redis):
    tenant = str(uuid.uuid4())
    key = f"quarry:ingest:slots:{tenant}"
    now_ms = int(time.time() * 1000)
    await redis.zadd(key, {"killed-worker": now_ms - int(LEASE_S * 1000) - 5000, "live": now_ms - 5000})
    assert await acquire_slot(redis, tenant, "new", 2)
    assert set(await redis.zrange(key, 0, -1)) == {b"live", b"new"}
    assert not await acquire_slot(redis, tenant, "third", 2)
    assert 0 < await redis.pttl(key) <= 2 * LEASE_S * 1000
    await redis.delete(key)


async def test_a_held_slot_is_renewed_and_a_dead_holders_expires(redis):
    tenant, lease = str(uuid.uuid4()), 0.3
    assert await acquire_slot(redis, tenant, "dead", 1, lease)  # its holder never renews
    assert not await acquire_slot(redis, tenant, "waiting", 1, lease)
    deadline = time.monotonic() + 10
    while not await acquire_slot(redis, tenant, "live", 1, lease):  # once the lease has passed
        assert time.monotonic() < deadline, "the dead holder's slot was never reclaimed"
        await asyncio.sleep(0.05)
    async with hold_slot(redis, tenant, "live", lease):
        for _ in range(8):  # 8 x 0.1 s: well past the lease, renewed all along
            await asyncio.sleep(0.1)
            assert not await acquire_slot(redis, tenant, "other", 1, lease)
    assert await redis.zcard(f"quarry:ingest:slots:{tenant}") == 0  # released
    assert not await renew_slot(redis, tenant, "live", lease)  # nothing left to renew


# --- a worker killed in the middle of the write transaction ----------------------------------------


async def _wait_for(predicate, within: float, what: str, proc: asyncio.subprocess.Process | None = None,
                    log: Any = None):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        if proc is not None and proc.returncode is not None:
            pytest.fail(f"the worker exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        await asyncio.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}" + (f":\n{log.read_text()[-3000:]}" if log else ""))


async def test_worker_killed_inside_the_write_transaction(
    ctx, pool, owner_pool, tenant, settings, redis, run_jobs, repo_root, tmp_path
):
    doc = await add_document(pool, ctx["blobs"], *tenant, LONG_TEXT.encode(), "txt")
    await run_jobs()  # drain jobs other tests left queued: the worker below must take only ours
    arq = await create_pool(RedisSettings.from_dsn(settings.redis_url))
    job_id = await enqueue_ingest(arq, doc.tenant_id, doc.id, doc.content_hash, doc.fmt)
    assert job_id == ingest_job_id(doc.id, doc.content_hash)

    # Hold the collection row: chunk and embedding inserts only need a key-share lock on it, so
    # they go through; the version bump at the very end of the transaction has to wait.
    lock_conn = await owner_pool.acquire()
    lock_tx = lock_conn.transaction()
    await lock_tx.start()
    await lock_conn.execute("SELECT 1 FROM collections WHERE id = $1 FOR NO KEY UPDATE", doc.collection_id)

    log = tmp_path / "worker.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUARRY_")}
    env.update(DATABASE_URL=settings.database_url, REDIS_URL=settings.redis_url, QUARRY_DATA_DIR=settings.data_dir,
               QUARRY_APP_DB_PASSWORD=settings.app_db_password or "", PYTHONPATH=str(repo_root))
    with log.open("wb") as out:
        worker = await asyncio.create_subprocess_exec(sys.executable, "-m", "ops.cli", "worker", env=env,
                                                      cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    blocked_pid = None
    try:
        async def blocked_backend():
            async with owner_pool.acquire() as conn:
                return await conn.fetchrow(
                    """SELECT a.pid, a.query, array(SELECT l.relation::regclass::text FROM pg_locks l
                                                   WHERE l.pid = a.pid AND l.mode = 'RowExclusiveLock'
                                                     AND l.granted) AS written
                       FROM pg_stat_activity a WHERE a.usename = $1 AND a.wait_event_type = 'Lock'""",
                    settings.app_db_user)

        blocked = await _wait_for(blocked_backend, 90, "the job to block on the collection lock", worker, log)
        blocked_pid = blocked["pid"]
        assert blocked["query"].lstrip().startswith("UPDATE collections SET version"), blocked["query"]
        assert {"chunks", "embeddings"} <= set(blocked["written"])  # inserted, not committed
        os.kill(worker.pid, signal.SIGKILL)
        await asyncio.wait_for(worker.wait(), 10)
    finally:
        if worker.returncode is None:
            worker.kill()
            await asyncio.wait_for(worker.wait(), 10)
        await lock_tx.rollback()
        await owner_pool.release(lock_conn)

    try:
        async def backend_gone():
            async with owner_pool.acquire() as conn:
                return not await conn.fetchval("SELECT 1 FROM pg_stat_activity WHERE pid = $1", blocked_pid)

        # Released, the orphaned backend finishes its statement, finds its client gone and rolls back.
        await _wait_for(backend_gone, 30, "the killed worker's backend to end")
        killed = await state(pool, doc)
        assert killed["status"] == "processing" and killed["attempts"] == 1
        assert killed["chunks"] == killed["embeddings"] == killed["chunk_count"] == 0
        assert blob_exists(ctx, doc)

        # The killed worker still holds the tenant's slot until its lease runs out (LEASE_S).
        slots = f"quarry:ingest:slots:{doc.tenant_id}"
        assert [m.decode().split(":")[0] for m in await redis.zrange(slots, 0, -1)] == [str(doc.id)]
        capped = dict(ctx, settings=msgspec.structs.replace(settings, ingest_concurrency_per_tenant=1))
        with pytest.raises(Retry):
            await ingest_document(capped, *doc.args())
        await redis.delete(slots)  # as if it had expired

        result = await ingest_document(capped, *doc.args())
        after = await state(pool, doc)
        assert result["status"] == "ready" and after["status"] == "ready" and after["attempts"] == 2
        assert after["chunks"] == after["embeddings"] == after["chunk_count"] == result["chunks"] > 1
        assert after["ords"] == list(range(after["chunks"]))
        assert not blob_exists(ctx, doc)
    finally:
        # arq would re-run the killed job after its in-progress timeout; nothing is left to do.
        await arq.zrem("arq:queue", job_id)
        await arq.delete(f"arq:in-progress:{job_id}", f"arq:job:{job_id}", f"arq:retry:{job_id}")
        await arq.aclose()
