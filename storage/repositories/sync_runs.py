"""Sync runs of a source: queued → running → succeeded | failed | canceled.

Tenant functions run inside `tenant_tx`; `queued_runs`, `queue_scheduled` and `fail_run` are
also used by the Dagster sensor as the migration role (policies in 0007_sources.sql).
A row is queued by "run now" (API, CLI) or by the scheduler; at most one is queued and one
running per source (partial unique indexes). The sync engine claims a row while holding the
source's advisory lock, so a 'running' row it finds then belongs to a dead process.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import asyncpg
import msgspec

from core.errors import NotFound
from storage.repositories._rows import to_struct, to_structs

__all__ = [
    "MAX_ERRORS", "Counts", "RunStatus", "SyncRun", "Trigger", "claim_run", "fail_run", "finish_run", "get_run",
    "latest_runs", "list_runs", "queue_scheduled", "queued_runs", "record_progress", "request_run", "running_runs",
]

RunStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
Trigger = Literal["manual", "schedule", "api"]
MAX_ERRORS = 100  # errors kept per run (the counts stay exact)

_COLUMNS = """id, tenant_id, source_id, status, trigger, added, updated, deleted, skipped, failed, errors,
    chunks_written, documents_total, complete, dagster_run_id, queued_at,
    CASE WHEN status = 'queued' THEN NULL ELSE started_at END AS started_at, finished_at,
    CASE WHEN status = 'queued' THEN NULL
         ELSE (extract(epoch FROM coalesce(finished_at, now()) - started_at) * 1000)::bigint END AS duration_ms"""


class SyncRun(msgspec.Struct, kw_only=True):
    id: UUID
    tenant_id: UUID
    source_id: UUID
    status: RunStatus
    trigger: Trigger
    added: int
    updated: int
    deleted: int
    skipped: int
    failed: int
    errors: list[dict[str, Any]]
    chunks_written: int
    documents_total: int | None
    complete: bool | None
    dagster_run_id: str | None
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: int | None


class Counts(msgspec.Struct, kw_only=True):
    added: int = 0
    updated: int = 0
    deleted: int = 0
    skipped: int = 0
    failed: int = 0
    chunks_written: int = 0


async def request_run(
    conn: asyncpg.Connection, tenant_id: UUID, source_id: UUID, trigger: Trigger
) -> tuple[SyncRun, bool]:
    """Queue a run unless one is queued already; returns (the queued run, created?)."""
    row = await conn.fetchrow(
        f"""INSERT INTO sync_runs (tenant_id, source_id, status, trigger) VALUES ($1, $2, 'queued', $3)
            ON CONFLICT (source_id) WHERE status = 'queued' DO NOTHING RETURNING {_COLUMNS}""",
        tenant_id, source_id, trigger,
    )
    if row is not None:
        return to_struct(row, SyncRun), True
    existing = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM sync_runs WHERE source_id = $1 AND status = 'queued'", source_id
    )
    if existing is None:  # claimed between the two statements: queue again
        again: tuple[SyncRun, bool] = await request_run(conn, tenant_id, source_id, trigger)
        return again
    return to_struct(existing, SyncRun), False


async def claim_run(
    conn: asyncpg.Connection, *, tenant_id: UUID, source_id: UUID, run_id: UUID | None, trigger: Trigger,
    dagster_run_id: str | None,
) -> SyncRun | None:
    """Start a run (caller holds the source's advisory lock). Runs left 'running' by a dead
    process are failed first. With `run_id`, that queued row is claimed (None if it is no
    longer queued); without, a new running row is made."""
    await conn.execute(
        """UPDATE sync_runs SET status = 'failed', finished_at = now(),
               errors = errors || '[{"error": "interrupted: the process running this sync stopped"}]'::jsonb
           WHERE source_id = $1 AND status = 'running'""",
        source_id,
    )
    if run_id is not None:
        row = await conn.fetchrow(
            f"""UPDATE sync_runs SET status = 'running', started_at = now(), dagster_run_id = $3
                WHERE id = $1 AND source_id = $2 AND status = 'queued' RETURNING {_COLUMNS}""",
            run_id, source_id, dagster_run_id,
        )
        return to_struct(row, SyncRun) if row else None
    row = await conn.fetchrow(
        f"""INSERT INTO sync_runs (tenant_id, source_id, status, trigger, dagster_run_id)
            VALUES ($1, $2, 'running', $3, $4) RETURNING {_COLUMNS}""",
        tenant_id, source_id, trigger, dagster_run_id,
    )
    assert row is not None
    return to_struct(row, SyncRun)


async def record_progress(
    conn: asyncpg.Connection, run_id: UUID, counts: Counts, errors: list[dict[str, Any]]
) -> None:
    await conn.execute(
        """UPDATE sync_runs SET added = $2, updated = $3, deleted = $4, skipped = $5, failed = $6,
               chunks_written = $7, errors = $8 WHERE id = $1""",
        run_id, counts.added, counts.updated, counts.deleted, counts.skipped, counts.failed,
        counts.chunks_written, errors[:MAX_ERRORS],
    )


async def finish_run(
    conn: asyncpg.Connection, run_id: UUID, *, status: RunStatus, counts: Counts, errors: list[dict[str, Any]],
    documents_total: int | None, complete: bool | None,
) -> SyncRun:
    await record_progress(conn, run_id, counts, errors)
    row = await conn.fetchrow(
        f"""UPDATE sync_runs SET status = $2, documents_total = $3, complete = $4, finished_at = now()
            WHERE id = $1 RETURNING {_COLUMNS}""",
        run_id, status, documents_total, complete,
    )
    if row is None:
        raise NotFound("no such sync run")
    return to_struct(row, SyncRun)


async def fail_run(conn: asyncpg.Connection, run_id: UUID, reason: str, *, only_if: RunStatus) -> bool:
    """End a queued/running run that no process will finish (e.g. its Dagster run died)."""
    status: str = await conn.execute(
        """UPDATE sync_runs SET status = 'failed', finished_at = now(),
               errors = errors || jsonb_build_array(jsonb_build_object('error', $2::text))
           WHERE id = $1 AND status = $3""",
        run_id, reason[:500], only_if,
    )
    return status != "UPDATE 0"


async def get_run(conn: asyncpg.Connection, run_id: UUID) -> SyncRun:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM sync_runs WHERE id = $1", run_id)
    if row is None:
        raise NotFound("no such sync run")
    return to_struct(row, SyncRun)


async def list_runs(
    conn: asyncpg.Connection, source_id: UUID, *, before: tuple[datetime, UUID] | None, limit: int
) -> list[SyncRun]:
    """Newest first (keyset on queued_at, id)."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM sync_runs
            WHERE source_id = $1 AND ($2::timestamptz IS NULL OR (queued_at, id) < ($2, $3::uuid))
            ORDER BY queued_at DESC, id DESC LIMIT $4""",
        source_id, before[0] if before else None, before[1] if before else None, limit,
    )
    return to_structs(rows, SyncRun)


async def latest_runs(conn: asyncpg.Connection, source_ids: list[UUID]) -> dict[UUID, SyncRun]:
    rows = await conn.fetch(
        f"""SELECT DISTINCT ON (source_id) {_COLUMNS} FROM sync_runs
            WHERE source_id = ANY($1::uuid[]) ORDER BY source_id, queued_at DESC, id DESC""",
        source_ids,
    )
    return {run.source_id: run for run in to_structs(rows, SyncRun)}


async def queued_runs(conn: asyncpg.Connection) -> list[SyncRun]:
    """Queued runs of every tenant, oldest first (the sensor; migration role)."""
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM sync_runs WHERE status = 'queued' ORDER BY queued_at")
    return to_structs(rows, SyncRun)


async def queue_scheduled(conn: asyncpg.Connection, tenant_id: UUID, source_id: UUID, tick: datetime) -> bool:
    """Queue the run of cron tick `tick` once (the sensor; migration role). False if that
    tick was already queued, or a run is queued anyway."""
    async with conn.transaction():
        advanced = await conn.fetchval(
            """UPDATE sources SET last_scheduled_at = $2
               WHERE id = $1 AND (last_scheduled_at IS NULL OR last_scheduled_at < $2) RETURNING true""",
            source_id, tick,
        )
        if not advanced:
            return False
        inserted = await conn.fetchval(
            """INSERT INTO sync_runs (tenant_id, source_id, status, trigger) VALUES ($1, $2, 'queued', 'schedule')
               ON CONFLICT (source_id) WHERE status = 'queued' DO NOTHING RETURNING true""",
            tenant_id, source_id,
        )
        return bool(inserted)


async def running_runs(conn: asyncpg.Connection) -> list[SyncRun]:
    """Every run marked `running` (the owner role: all tenants), for the sensor's stale-run check."""
    rows = await conn.fetch("SELECT id FROM sync_runs WHERE status = 'running'")
    return [await get_run(conn, r["id"]) for r in rows]
