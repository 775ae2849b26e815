"""Sync assets: source_documents → chunks → embeddings, partitioned by source.

One step materialises the three assets of a source's partition: a document's chunks and
embeddings are swapped in the same transaction as its row (readers never see a half-indexed
document), so they cannot be separate steps without giving that up. Each asset still gets
its own materialisation and metadata per run, and the asset graph shows the lineage.
No `from __future__ import annotations` here: Dagster reads annotations at run time.
"""

import asyncio
from typing import Any
from uuid import UUID

import asyncpg
from dagster import (
    AssetExecutionContext,
    AssetSpec,
    DynamicPartitionsDefinition,
    Failure,
    MaterializeResult,
    MetadataValue,
    define_asset_job,
    in_process_executor,
    multi_asset,
)

from pipelines.embedding import EmbedderResolver
from pipelines.resources import EmbedderResource, QuarryResource
from pipelines.sync import SyncDeps, SyncReport, sync_parser, sync_source
from rag.chunking import HFTokenizer
from rag.embedders import tokenizer_path
from storage.db import create_pool

SOURCES_PARTITIONS = DynamicPartitionsDefinition(name="sources")
TAG_SOURCE = "quarry/source"
TAG_TENANT = "quarry/tenant"
TAG_SYNC_RUN = "quarry/sync_run_id"
TAG_TRIGGER = "quarry/trigger"
TAG_MAX_RUNTIME = "dagster/max_runtime"
KILL_GRACE_S = 300
"""Dagster kills a sync run this long after QUARRY_SYNC_MAX_RUNTIME_S: the run stops itself at
the limit (its row failed, its lock freed); the kill is for a process too wedged to do so."""


def max_runtime_tag(sync_max_runtime_s: float) -> str:
    """The `dagster/max_runtime` of a sync run (seconds): run monitoring fails it after that."""
    return str(int(sync_max_runtime_s) + KILL_GRACE_S)

SOURCE_DOCUMENTS = AssetSpec(
    "source_documents", group_name="syncs", partitions_def=SOURCES_PARTITIONS,
    description="Documents of a data source, kept in step with upstream (adds, updates, deletes).",
)
CHUNKS = AssetSpec(
    "chunks", deps=["source_documents"], group_name="syncs", partitions_def=SOURCES_PARTITIONS,
    description="Token-aware, heading-aware chunks (with full-text vectors) of the source's documents.",
)
EMBEDDINGS = AssetSpec(
    "embeddings", deps=["chunks"], group_name="syncs", partitions_def=SOURCES_PARTITIONS,
    description="Embeddings of the chunks by their collection's active embedder (HNSW-indexed).",
)


def run_sync(
    quarry: QuarryResource, embedder_resource: EmbedderResource, source_id: str, tags: dict[str, str],
    dagster_run_id: str | None, log: Any,
) -> SyncReport:
    settings = quarry.settings()
    trigger = tags.get(TAG_TRIGGER, "manual")
    run_id = UUID(tags[TAG_SYNC_RUN]) if tags.get(TAG_SYNC_RUN) else None

    async def go() -> SyncReport:
        owner = await asyncpg.connect(quarry.database_url)
        try:
            tenant_id = await owner.fetchval("SELECT tenant_id FROM sources WHERE id = $1", UUID(source_id))
        finally:
            await owner.close()
        if tenant_id is None:
            raise Failure(description=f"source {source_id} no longer exists")
        pool = await create_pool(quarry.app_url(), min_size=1, max_size=3)
        embedder = embedder_resource.make(settings)
        resolver = EmbedderResolver(embedder, settings)
        try:
            async with sync_parser(settings) as parser:
                deps = SyncDeps(pool=pool, settings=settings, tokenizer=HFTokenizer.from_file(tokenizer_path()),
                                parser=parser, embedders=resolver, scratch_dir=settings.data_path / "sync-scratch")
                return await sync_source(
                    deps, tenant_id, UUID(source_id), run_id=run_id,
                    trigger=trigger if trigger in ("manual", "schedule", "api") else "manual",  # type: ignore[arg-type]
                    dagster_run_id=dagster_run_id, on_item=lambda uri, outcome: log.debug(f"{outcome}: {uri}"),
                )
        finally:
            await resolver.aclose()
            await embedder.aclose()
            await pool.close()

    return asyncio.run(go())


def _errors_table(errors: list[dict[str, Any]]) -> str:
    rows = "".join(f"| {e.get('uri', '(source)')} | {str(e.get('error', '')).replace('|', '/')} |\n"
                   for e in errors[:20])
    return "| item | error |\n|---|---|\n" + rows


@multi_asset(specs=[SOURCE_DOCUMENTS, CHUNKS, EMBEDDINGS], partitions_def=SOURCES_PARTITIONS, can_subset=False,
             op_tags={"kind": "sync"})
def source_sync(context: AssetExecutionContext, quarry: QuarryResource, embedder: EmbedderResource):  # type: ignore[no-untyped-def]
    """Incremental sync of one source (partition key = source id)."""
    report = run_sync(quarry, embedder, context.partition_key, dict(context.run.tags), context.run.run_id, context.log)
    run = report.run
    context.log.info(
        f"sync run {run.id}: {run.status}; added {run.added}, updated {run.updated}, deleted {run.deleted}, "
        f"skipped {run.skipped}, failed {run.failed}"
    )
    if run.status != "succeeded":
        raise Failure(description=str(run.errors[0]["error"] if run.errors else run.status),
                      metadata={"sync_run_id": str(run.id), "errors": MetadataValue.md(_errors_table(run.errors))})
    yield MaterializeResult(asset_key="source_documents", metadata={
        "sync_run_id": str(run.id), "trigger": run.trigger, "added": run.added, "updated": run.updated,
        "deleted": run.deleted, "skipped": run.skipped, "failed": run.failed,
        "documents_total": run.documents_total or 0, "listing_complete": bool(run.complete),
        "fetch_ms": report.timings_ms.get("fetch", 0.0), "duration_ms": run.duration_ms or 0,
        "errors": MetadataValue.md(_errors_table(run.errors)), "notes": MetadataValue.md("\n".join(report.notes)),
    })
    yield MaterializeResult(asset_key="chunks", metadata={
        "chunks_written": run.chunks_written, "parse_ms": report.timings_ms.get("parse", 0.0),
        "chunk_ms": report.timings_ms.get("chunk", 0.0),
    })
    yield MaterializeResult(asset_key="embeddings", metadata={
        "embedder": report.embedder, "vectors_written": run.chunks_written,
        "embed_ms": report.timings_ms.get("embed", 0.0), "write_ms": report.timings_ms.get("write", 0.0),
    })


# One step per run: the in-process executor saves spawning (and importing) a second process.
sync_job = define_asset_job(
    "source_sync_job", selection=[source_sync], executor_def=in_process_executor,
    description="Sync one data source (its partition): started by the sources sensor, the API or the UI.",
)
