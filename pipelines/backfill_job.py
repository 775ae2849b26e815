"""The embedding backfill job (launch it from the Dagster launchpad or `quarry backfill`)."""

import asyncio
from uuid import UUID

import asyncpg
from dagster import Config, Failure, MetadataValue, OpExecutionContext, Output, in_process_executor, job, op
from pydantic import Field

from pipelines.backfill import BackfillReport, backfill_collection
from pipelines.embedding import embedder_from_spec
from pipelines.resources import QuarryResource
from storage.db import create_pool
from storage.repositories.embedders import EmbedderSpec


class BackfillConfig(Config):
    tenant: str = Field(description="tenant name")
    collection_id: str
    kind: str = Field(default="openai", description="minilm | openai")
    model: str = Field(default="", description="OpenAI-compatible model name")
    dim: int = Field(default=0, description="the model's dimension (openai)")
    base_url: str = Field(default="", description="OpenAI-compatible base URL; empty: QUARRY_OPENAI_BASE_URL")
    batch_size: int = 64
    switch: bool = Field(default=True, description="make it the collection's active embedder when complete")


def spec_from_config(config: BackfillConfig) -> EmbedderSpec:
    if config.kind == "minilm":
        return EmbedderSpec(name="minilm-l6-v2", kind="minilm", dim=384)
    if config.kind != "openai" or not config.model or config.dim < 1:
        raise Failure(description="kind must be minilm, or openai with a model and dim")
    return EmbedderSpec(name=f"openai:{config.model}", kind="openai", model=config.model, dim=config.dim,
                        base_url=config.base_url or None)


@op(description="Re-embed a collection side by side, build the HNSW index, switch when complete.")
def backfill_embeddings(context: OpExecutionContext, config: BackfillConfig, quarry: QuarryResource) -> Output[str]:
    settings = quarry.settings()
    spec = spec_from_config(config)

    async def go() -> BackfillReport:
        owner = await asyncpg.connect(quarry.database_url)
        try:
            tenant = await owner.fetchrow("SELECT id FROM quarry_tenant_by_name($1)", config.tenant)
        finally:
            await owner.close()
        if tenant is None:
            raise Failure(description=f"no tenant named {config.tenant!r}")
        pool = await create_pool(quarry.app_url(), min_size=1, max_size=3)
        embedder = embedder_from_spec(spec, settings)
        try:
            return await backfill_collection(
                pool, quarry.database_url, tenant_id=tenant["id"], collection_id=UUID(config.collection_id),
                embedder=embedder, spec=spec, batch_size=config.batch_size, switch=config.switch,
                dagster_run_id=context.run.run_id,
            )
        finally:
            await embedder.aclose()
            await pool.close()

    report = asyncio.run(go())
    context.log.info(f"backfill {report.backfill_id}: {report.embedded} chunks embedded, switched={report.switched}")
    return Output(str(report.backfill_id), metadata={
        "embedder": report.embedder, "dim": report.dim, "chunks_embedded": report.embedded,
        "total_chunks": report.total_chunks, "passes": report.passes, "switched": report.switched,
        "index": report.index, "seconds": report.seconds, "backfill_id": MetadataValue.text(str(report.backfill_id)),
    })


@job(description="Re-embed a collection with another embedder (any dimension) and switch over with no downtime.",
     tags={"kind": "backfill"}, executor_def=in_process_executor)
def embedding_backfill_job() -> None:
    backfill_embeddings()
