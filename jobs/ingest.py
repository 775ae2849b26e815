"""The ingestion job: parse → chunk → embed → write, for one document version.

Idempotent: the job is keyed by document id + content hash (`_job_id`); a job whose
document changed or vanished since it was queued does nothing; chunks, embeddings and the
full-text vectors are swapped in ONE transaction at the end, so a worker killed at any
point leaves the previous version intact and no partial rows — the retry starts clean.

Failures: content problems (unsupported, corrupt, encrypted, empty, and a parse that runs out
of time or memory in its worker process: rag.parse_pool) fail the document at once with the
reason; anything else is retried with exponential backoff, and after `ingest_max_tries`
attempts the document stays `failed` with the last reason.

Nothing stays `processing`: a job past its own deadline (`job_deadline_s`) fails the document
with the reason; a job cancelled (worker shutdown) gives the document back as `queued` for
arq's re-run; a job whose worker was killed leaves it `processing`, and the re-run (arq runs it
again when its in-progress key expires: the job timeout + 10 s) claims it again - unless it has
had all its attempts, then it fails.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import uuid
from typing import Any, Literal

from arq import Retry
from arq.connections import ArqRedis

from core.errors import QuarryError
from core.settings import Settings
from rag.ingest import prepare_file
from rag.isolation import default_workers
from storage.blobs import BlobStore
from storage.models import ChunkRow, Document
from storage.repositories import chunks as chunk_repo
from storage.repositories import documents
from storage.tenancy import tenant_tx

from .limits import acquire_slot, hold_slot

__all__ = [
    "INGEST_JOB",
    "INGEST_TIMEOUT_S",
    "WORKER_MAX_JOBS",
    "enqueue_ingest",
    "ingest_document",
    "ingest_job_id",
    "ingest_timeout_s",
    "job_deadline_s",
]

_log = logging.getLogger("quarry.jobs.ingest")
INGEST_JOB = "ingest_document"
# What a job may spend after its parse: embedding (a document of ~20 MB of text is ~20,000
# chunks, minutes on a CPU) and the write.
_EMBED_AND_WRITE_S = 300.0
# Between the job's own deadline and arq's timeout: time to kill the parse, fail the document and
# release the slot before arq cancels the job from outside.
_CLEANUP_S = 30.0


def job_deadline_s(settings: Settings, parse_workers: int, max_jobs: int) -> float:
    """The job's own deadline: in the worst case each of the worker's `max_jobs` jobs waits for
    a parsing process behind others that all run to the parse timeout, then embeds."""
    return math.ceil(max_jobs / parse_workers) * settings.parse_timeout_s + _EMBED_AND_WRITE_S


def ingest_timeout_s(settings: Settings, parse_workers: int, max_jobs: int) -> float:
    """arq's timeout for the job. Derived from the parse timeout, not a fixed 15 minutes: a job
    whose worker was killed is run again only when this (+ 10 s) has passed, so shorter is
    sooner (450 s with the defaults on 8 CPUs; 810 s on 2, where 8 jobs share 2 parsers)."""
    return job_deadline_s(settings, parse_workers, max_jobs) + _CLEANUP_S


# Jobs run at once by one worker process (jobs.worker).
WORKER_MAX_JOBS = 8
# For workers made outside jobs.worker.make_worker_settings (tests, benchmarks): default settings.
INGEST_TIMEOUT_S = ingest_timeout_s(Settings(), default_workers(WORKER_MAX_JOBS), WORKER_MAX_JOBS)


def ingest_job_id(document_id: uuid.UUID | str, content_hash: str) -> str:
    return f"ingest:{document_id}:{content_hash}"


async def enqueue_ingest(
    arq: ArqRedis, tenant_id: uuid.UUID, document_id: uuid.UUID, content_hash: str, fmt: str
) -> str:
    job_id = ingest_job_id(document_id, content_hash)
    await arq.enqueue_job(INGEST_JOB, str(tenant_id), str(document_id), content_hash, fmt, _job_id=job_id)
    return job_id


def _backoff_s(attempt: int) -> float:
    return float(min(60.0, 2.0 ** attempt) + random.uniform(0, 1))  # noqa: S311 - jitter, not crypto


def _is_content_error(exc: BaseException) -> bool:
    # 415/422 from the parsers: the file itself is the problem, retrying cannot help.
    return isinstance(exc, QuarryError) and exc.status in (415, 422)


async def ingest_document(
    ctx: dict[str, Any], tenant_id: str, document_id: str, content_hash: str, fmt: str
) -> dict[str, Any]:
    settings: Settings = ctx["settings"]
    pool, redis, blobs = ctx["pool"], ctx["redis"], ctx["blobs"]
    token = f"{document_id}:{uuid.uuid4().hex}"
    if not await acquire_slot(redis, tenant_id, token, settings.ingest_concurrency_per_tenant):
        # The tenant is at its cap. Come back soon: a slot frees up every few hundred ms on a busy
        # batch, and only the worker's max_jobs jobs can be waiting like this at once.
        raise Retry(defer=0.2 + random.uniform(0, 0.3))  # noqa: S311 - jitter, not crypto
    doc_id = uuid.UUID(document_id)
    # Released only after the parse's process is gone (a timeout or cancellation kills it first).
    async with hold_slot(redis, tenant_id, token):  # renewed while the job runs, released after
        deadline_s = ctx.get("job_deadline_s", INGEST_TIMEOUT_S - _CLEANUP_S)
        deadline = asyncio.timeout(deadline_s)
        try:
            async with deadline:
                return await _ingest(ctx, settings, pool, blobs, tenant_id, doc_id, content_hash, fmt)
        except TimeoutError:
            if not deadline.expired():
                raise
            reason = f"ingestion took longer than {deadline_s:g} s"
            await _release(pool, tenant_id, doc_id, content_hash, "failed", reason)
            await _cleanup_blob(pool, blobs, tenant_id, doc_id, content_hash)
            return {"status": "failed", "error": reason}
        except asyncio.CancelledError:
            # Worker shutdown (arq runs a cancelled job again): the document waits for that run.
            # Shielded: a second cancellation must not leave it `processing`.
            await asyncio.shield(_release(
                pool, tenant_id, doc_id, content_hash, "queued", "interrupted (the worker stopped); will be retried"))
            raise


async def _release(
    pool: Any, tenant_id: str, document_id: uuid.UUID, content_hash: str, status: Literal["queued", "failed"],
    reason: str,
) -> None:
    async with tenant_tx(pool, tenant_id) as conn:
        await documents.release_unfinished(conn, document_id, content_hash, status, reason)


async def _ingest(
    ctx: dict[str, Any], settings: Settings, pool: Any, blobs: BlobStore, tenant_id: str,
    document_id: uuid.UUID, content_hash: str, fmt: str,
) -> dict[str, Any]:
    async with tenant_tx(pool, tenant_id) as conn:
        doc = await documents.mark_processing(conn, document_id, content_hash)
    if doc is None:
        # Nobody will ingest these bytes any more (unless another pending document shares them).
        await _cleanup_blob(pool, blobs, tenant_id, document_id, content_hash)
        return {"status": "skipped", "reason": "document changed, deleted or already ready"}
    if doc.attempts > settings.ingest_max_tries:
        # Claimed again after runs that never finished (a worker killed each time: by the OOM
        # killer, say): give up like any other document out of attempts.
        reason = f"gave up after {settings.ingest_max_tries} attempts that did not finish (the worker stopped)"
        await _fail(pool, blobs, tenant_id, document_id, content_hash, reason)
        return {"status": "failed", "error": reason}
    try:
        # The collection's active embedder (a backfill may have switched it from the default).
        async with tenant_tx(pool, tenant_id, readonly=True) as conn:
            embedder = await ctx["embedders"].get(conn, await _active_embedder(conn, doc))
        prepared = await prepare_file(
            blobs.path_for(tenant_id, content_hash), fmt, tokenizer=ctx["tokenizer"],
            # The embedder's limit counts its special tokens ([CLS], [SEP]); the chunker does not.
            embedder=embedder, max_tokens=min(settings.chunk_tokens, embedder.max_tokens - 2),
            overlap_tokens=settings.chunk_overlap_tokens, parser=ctx["parser"],
        )
        rows = [ChunkRow(ord=c.ord, text=c.text, heading=c.heading, page=c.page,
                         char_start=c.char_start, char_end=c.char_end, token_count=c.token_count)
                for c in prepared.chunks]
        async with tenant_tx(pool, tenant_id) as conn:
            # Checked under a key-share lock, which a backfill's switch (FOR UPDATE) waits for:
            # chunks embedded by the embedder active when the job began must not land after a
            # switch to another one (the retry embeds again with the new one).
            if await _active_embedder(conn, doc, lock=True) != embedder.name:
                raise QuarryError("the collection's embedder changed during ingestion; embedding again")
            written = await chunk_repo.replace_chunks(
                conn, document_id=document_id, content_hash=content_hash, chunks=rows,
                embeddings=prepared.embeddings, embedder=embedder.name,
                title=doc.title or prepared.title or "", timings=prepared.timings_ms,
            )
    except FileNotFoundError:
        await _fail(pool, blobs, tenant_id, document_id, content_hash, "the uploaded file is missing")
        return {"status": "failed"}
    except Exception as exc:
        reason = _reason(exc)
        if _is_content_error(exc) or doc.attempts >= settings.ingest_max_tries:
            await _fail(pool, blobs, tenant_id, document_id, content_hash, reason)
            return {"status": "failed", "error": reason}
        _log.warning("ingest of %s failed (attempt %d), retrying: %s", document_id, doc.attempts, reason)
        async with tenant_tx(pool, tenant_id) as conn:
            await documents.requeue(conn, document_id, content_hash, f"retrying: {reason}")
        raise Retry(defer=_backoff_s(doc.attempts)) from exc
    await _cleanup_blob(pool, blobs, tenant_id, document_id, content_hash)
    if not written:
        return {"status": "skipped", "reason": "document changed or deleted during ingestion"}
    return {"status": "ready", "chunks": len(rows), "timings_ms": prepared.timings_ms}


async def _active_embedder(conn: Any, doc: Document, *, lock: bool = False) -> str:
    sql = "SELECT active_embedder FROM collections WHERE id = $1" + (" FOR KEY SHARE" if lock else "")
    return str(await conn.fetchval(sql, doc.collection_id))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, QuarryError):
        return exc.detail
    return f"{type(exc).__name__}: {exc}"[:500]


async def _fail(
    pool: Any, blobs: BlobStore, tenant_id: str, document_id: uuid.UUID, content_hash: str, reason: str
) -> None:
    async with tenant_tx(pool, tenant_id) as conn:
        await documents.mark_failed(conn, document_id, content_hash, reason)
    await _cleanup_blob(pool, blobs, tenant_id, document_id, content_hash)


async def _cleanup_blob(
    pool: Any, blobs: BlobStore, tenant_id: str, document_id: uuid.UUID, content_hash: str
) -> None:
    """Delete the upload unless another pending document of the tenant has the same bytes."""
    async with tenant_tx(pool, tenant_id, readonly=True) as conn:
        pending = await documents.other_pending_with_hash(conn, content_hash, document_id)
    if not pending:
        blobs.delete(tenant_id, content_hash)
