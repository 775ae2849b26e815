"""The ingestion job: parse → chunk → embed → write, for one document version.

Idempotent: the job is keyed by document id + content hash (`_job_id`); a job whose
document changed or vanished since it was queued does nothing; chunks, embeddings and the
full-text vectors are swapped in ONE transaction at the end, so a worker killed at any
point leaves the previous version intact and no partial rows — the retry starts clean.

Failures: content problems (unsupported, corrupt, encrypted, empty) fail the document at
once with the reason; anything else is retried with exponential backoff, and after
`ingest_max_tries` attempts the document stays `failed` with the last reason.
"""

from __future__ import annotations

import logging
import random
import uuid
from typing import Any

from arq import Retry
from arq.connections import ArqRedis

from core.errors import QuarryError
from core.settings import Settings
from rag.ingest import prepare_file
from storage.blobs import BlobStore
from storage.models import ChunkRow, Document
from storage.repositories import chunks as chunk_repo
from storage.repositories import documents
from storage.tenancy import tenant_tx

from .limits import acquire_slot, hold_slot

__all__ = ["INGEST_JOB", "enqueue_ingest", "ingest_document", "ingest_job_id"]

_log = logging.getLogger("quarry.jobs.ingest")
INGEST_JOB = "ingest_document"
INGEST_TIMEOUT_S = 900


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
    async with hold_slot(redis, tenant_id, token):  # renewed while the job runs, released after
        return await _ingest(ctx, settings, pool, blobs, tenant_id, uuid.UUID(document_id), content_hash, fmt)


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
    try:
        # The collection's active embedder (a backfill may have switched it from the default).
        async with tenant_tx(pool, tenant_id, readonly=True) as conn:
            embedder = await ctx["embedders"].get(conn, await _active_embedder(conn, doc))
        prepared = await prepare_file(
            blobs.path_for(tenant_id, content_hash), fmt, tokenizer=ctx["tokenizer"],
            # The embedder's limit counts its special tokens ([CLS], [SEP]); the chunker does not.
            embedder=embedder, max_tokens=min(settings.chunk_tokens, embedder.max_tokens - 2),
            overlap_tokens=settings.chunk_overlap_tokens,
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
