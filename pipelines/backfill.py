"""Embedding backfill, framework-free: re-embed a collection with another embedder (any
dimension) side by side, build its HNSW index, then switch the collection over atomically.

Search keeps using the active embedder's rows the whole time (they are never touched), and
the switch happens only when every chunk has an embedding by the new one — checked under
the collection's row lock in the switching transaction. A chunk written meanwhile by a sync
or an upload is caught by the next pass. Interrupted at any point, a rerun resumes: chunks
that already have the new embedding are skipped, and an index left invalid is rebuilt.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from rag.embedders import Embedder
from storage.repositories import embedders as repo
from storage.repositories.embedders import EmbedderSpec
from storage.tenancy import tenant_tx

__all__ = ["BackfillError", "BackfillReport", "backfill_collection"]

_log = logging.getLogger("quarry.pipelines.backfill")
MAX_PASSES = 5


class BackfillError(RuntimeError):
    pass


@dataclass
class BackfillReport:
    backfill_id: UUID
    embedder: str
    dim: int
    embedded: int
    total_chunks: int
    passes: int
    switched: bool
    index: str
    seconds: float


async def backfill_collection(
    pool: asyncpg.Pool, owner_url: str, *, tenant_id: UUID, collection_id: UUID, embedder: Embedder,
    spec: EmbedderSpec, batch_size: int = 64, switch: bool = True, dagster_run_id: str | None = None,
) -> BackfillReport:
    """`pool` is the application role's (RLS); `owner_url` registers the embedder and builds
    its index (DDL)."""
    if spec.name != embedder.name or spec.dim != embedder.dim:
        raise BackfillError(f"spec {spec.name}/{spec.dim} does not describe embedder {embedder.name}/{embedder.dim}")
    started = time.perf_counter()
    owner = await asyncpg.connect(owner_url)  # embedders are platform data: the app role only reads them
    try:
        await repo.register_spec(owner, spec)
    finally:
        await owner.close()
    async with tenant_tx(pool, tenant_id) as conn:
        backfill = await repo.start_backfill(conn, tenant_id=tenant_id, collection_id=collection_id,
                                             embedder=spec.name, dagster_run_id=dagster_run_id)
    embedded, passes, switched, index = 0, 0, False, ""
    try:
        for passes in range(1, MAX_PASSES + 1):  # noqa: B007 - reported
            embedded += await _embed_missing(pool, tenant_id, collection_id, backfill.id, embedder, batch_size)
            if not index:
                owner = await asyncpg.connect(owner_url)
                try:
                    index = await repo.ensure_hnsw_index(owner, spec.name, spec.dim)
                finally:
                    await owner.close()
            async with tenant_tx(pool, tenant_id) as conn:
                if not switch:
                    await repo.complete_backfill(conn, backfill.id)
                    break
                switched = await repo.switch_active(conn, backfill.id, collection_id, spec.name)
            if switched:
                break
        else:
            raise BackfillError(f"chunks kept changing through {MAX_PASSES} passes; run the backfill again")
    except BaseException as exc:
        async with tenant_tx(pool, tenant_id) as conn:
            await repo.fail_backfill(conn, backfill.id, f"{type(exc).__name__}: {exc}"[:1000])
        raise
    return BackfillReport(
        backfill_id=backfill.id, embedder=spec.name, dim=spec.dim, embedded=embedded,
        total_chunks=backfill.total_chunks, passes=passes, switched=switched, index=index,
        seconds=round(time.perf_counter() - started, 3),
    )


async def _embed_missing(
    pool: asyncpg.Pool, tenant_id: UUID, collection_id: UUID, backfill_id: UUID, embedder: Embedder, batch_size: int
) -> int:
    after, done = 0, 0
    while True:
        async with tenant_tx(pool, tenant_id, readonly=True) as conn:
            batch = await repo.missing_chunks(conn, collection_id, embedder.name, after, batch_size)
        if not batch:
            return done
        vectors = await embedder.embed([text for _, text in batch])
        ids = [chunk_id for chunk_id, _ in batch]
        async with tenant_tx(pool, tenant_id) as conn:
            await repo.insert_embeddings(conn, ids, vectors, embedder.name)
            await repo.record_backfill_progress(conn, backfill_id, len(ids))
        after, done = ids[-1], done + len(ids)
        _log.debug("backfill %s: %d chunks embedded", backfill_id, done)
