"""arq worker settings (`quarry worker` runs them). Resources are made in `startup` and
closed in `shutdown`; tasks find them in the job context.

Tasks are idempotent (callers pass `_job_id`) and retry transient failures with backoff.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from arq import func
from arq.connections import RedisSettings

from api.app import app_database_url
from core.settings import Settings
from core.telemetry import instrument_jobs, setup_telemetry
from jobs.ingest import (
    INGEST_JOB,
    INGEST_TIMEOUT_S,
    WORKER_MAX_JOBS,
    ingest_document,
    ingest_timeout_s,
    job_deadline_s,
)
from pipelines.embedding import EmbedderResolver
from rag.chunking import HFTokenizer
from rag.embedders import make_embedder, tokenizer_path
from rag.isolation import default_workers
from rag.parse_pool import ParsePool
from storage.blobs import BlobStore
from storage.db import create_pool

__all__ = ["FUNCTIONS", "MAX_JOBS", "make_worker_settings", "parse_workers", "ping", "shutdown_resources",
           "startup_resources"]


async def ping(ctx: dict[str, Any], payload: str) -> dict[str, Any]:
    """Round trip through Postgres: proves a worker is alive and can reach the database."""
    async with ctx["pool"].acquire() as conn:
        now = await conn.fetchval("SELECT now()")
    return {"payload": payload, "db_time": now.isoformat(), "worker_pid": os.getpid()}


MAX_JOBS = WORKER_MAX_JOBS


def _functions(ingest_timeout: float) -> list[Any]:
    # Timed (quarry_job_duration_seconds) and traced with the enqueuing request's trace (core.telemetry).
    return instrument_jobs([
        ping,
        # Ingestion counts its own attempts in the documents table (see jobs.ingest); arq's
        # max_tries only bounds waiting for a free per-tenant slot. keep_result=0 frees the
        # job id at once, so the same content can be queued again after a change and back.
        func(ingest_document, name=INGEST_JOB, keep_result=0, timeout=ingest_timeout, max_tries=10_000),
    ])


# For workers made outside make_worker_settings (tests, benchmarks).
FUNCTIONS = _functions(INGEST_TIMEOUT_S)


def parse_workers(settings: Settings) -> int:
    return settings.parse_workers or default_workers(MAX_JOBS)


async def startup_resources(ctx: dict[str, Any], settings: Settings) -> None:
    """Everything a task needs; also used by tests that run jobs in-process."""
    ctx["settings"] = settings
    ctx["pool"] = await create_pool(app_database_url(settings), min_size=1, max_size=4)
    ctx["embedder"] = make_embedder(settings)
    # Collections switched to another embedder by a backfill are embedded by that one.
    ctx["embedders"] = EmbedderResolver(ctx["embedder"], settings)
    ctx["tokenizer"] = HFTokenizer.from_file(tokenizer_path())
    ctx["blobs"] = BlobStore.under(settings.data_path)
    # Documents are parsed and chunked in these processes (killable; bounded in time and memory).
    workers = parse_workers(settings)
    ctx["parser"] = ParsePool(tokenizer_path(), workers=workers, timeout_s=settings.parse_timeout_s,
                              max_memory_mb=settings.parse_max_memory_mb)
    ctx["job_deadline_s"] = job_deadline_s(settings, workers, MAX_JOBS)
    await ctx["parser"].start()  # fails here, not per document, when the memory limit is too low


async def shutdown_resources(ctx: dict[str, Any]) -> None:
    if "parser" in ctx:
        await asyncio.to_thread(ctx["parser"].close)
    if "embedders" in ctx:
        await ctx["embedders"].aclose()
    if "embedder" in ctx:
        await ctx["embedder"].aclose()
    if "pool" in ctx:
        await ctx["pool"].close()


def make_worker_settings(settings: Settings) -> dict[str, Any]:
    async def startup(ctx: dict[str, Any]) -> None:
        setup_telemetry(settings, "worker")
        await startup_resources(ctx, settings)

    timeout = ingest_timeout_s(settings, parse_workers(settings), MAX_JOBS)
    return {
        "functions": _functions(timeout),
        "redis_settings": RedisSettings.from_dsn(settings.redis_url or "redis://127.0.0.1:6379"),
        "on_startup": startup,
        "on_shutdown": shutdown_resources,
        "max_jobs": MAX_JOBS,
        # arq sleeps this long between polls even while jobs wait, so a finished job's slot
        # stays empty until the next tick: with arq's 0.5 s default the embedder sat idle a
        # third of the time on a batch of small documents (perf/ingest_bench.py). 50 ms costs
        # Redis 20 cheap calls a second per worker.
        "poll_delay": 0.05,
        "job_timeout": timeout,
        "keep_result": 3600,
        "handle_signals": True,
    }
