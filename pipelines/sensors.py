"""The sources sensor: the `sources` table drives Dagster, so a new, changed or deleted
source is picked up on the next tick without restarting anything.

Each tick (every few seconds) it
1. keeps the dynamic partitions equal to the set of source ids;
2. queues the latest due cron tick of every enabled, scheduled source (once per tick);
3. requests a run of `source_sync_job` for every queued sync run (API "run now", CLI or
   schedule), with run_key = the sync run id, so each is launched exactly once;
4. fails queued/running rows whose Dagster run ended without finishing them;
5. fails Dagster sync runs whose worker died (STARTED for minutes while nobody holds the
   source's advisory lock): the per-source concurrency limit of the run queue would
   otherwise wait on them forever.
"""

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
from croniter import croniter
from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from pipelines.resources import PostgresResource
from pipelines.sync_assets import SOURCES_PARTITIONS, TAG_SOURCE, TAG_SYNC_RUN, TAG_TENANT, TAG_TRIGGER, sync_job
from storage.repositories import sources as source_repo
from storage.repositories import sync_runs as run_repo

SENSOR_INTERVAL_S = 3
_ENDED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
_REAP_AFTER = timedelta(seconds=30)
_DEAD_WORKER_AFTER_S = 120.0


def due_tick(schedule: str, since: datetime, now: datetime) -> datetime | None:
    """The latest cron tick in (since, now], if any."""
    tick: datetime = croniter(schedule, now).get_prev(datetime)
    return tick if tick > since else None


async def _tick(database_url: str, now: datetime) -> tuple[list[source_repo.ScheduledSource], list[run_repo.SyncRun]]:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.set_type_codec("jsonb", schema="pg_catalog", format="text",
                                  encoder=lambda v: msgspec.json.encode(v).decode(), decoder=msgspec.json.decode)
        all_sources = await source_repo.scheduled_sources(conn)
        for s in all_sources:
            if s.enabled and s.schedule:
                tick = due_tick(s.schedule, s.last_scheduled_at or s.updated_at, now)
                if tick is not None:
                    await run_repo.queue_scheduled(conn, s.tenant_id, s.id, tick)
        running = await conn.fetch("SELECT id, dagster_run_id FROM sync_runs WHERE status = 'running'")
        queued = await run_repo.queued_runs(conn)
        return all_sources, queued + [r for r in await _running(conn, running)]
    finally:
        await conn.close()


async def _running(conn: asyncpg.Connection, rows: list[Any]) -> list[run_repo.SyncRun]:
    return [await run_repo.get_run(conn, r["id"]) for r in rows]


async def _fail_rows(database_url: str, failures: list[tuple[Any, str, Any]]) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        for run_id, reason, only_if in failures:
            await run_repo.fail_run(conn, run_id, reason, only_if=only_if)
    finally:
        await conn.close()


@sensor(job=sync_job, minimum_interval_seconds=SENSOR_INTERVAL_S, default_status=DefaultSensorStatus.RUNNING,
        description="Keeps source partitions in step with the sources table; launches due and requested syncs.")
def sources_sensor(context: SensorEvaluationContext, postgres: PostgresResource) -> SensorResult:
    now = datetime.now(UTC)
    all_sources, runs = asyncio.run(_tick(postgres.database_url, now))
    by_id = {str(s.id): s for s in all_sources}
    existing = set(context.instance.get_dynamic_partitions(SOURCES_PARTITIONS.name or "sources"))
    added, removed = sorted(set(by_id) - existing), sorted(existing - set(by_id))

    requests, failures = [], []
    for run in runs:
        source = by_id.get(str(run.source_id))
        if run.status == "queued" and source is not None:
            if now - run.queued_at > _REAP_AFTER and _dagster_run_ended(context, run_key_tag=str(run.id)):
                failures.append((run.id, "the Dagster run ended before the sync started", "queued"))
                continue
            requests.append(RunRequest(
                run_key=f"sync:{run.id}", partition_key=str(run.source_id),
                tags={TAG_SOURCE: str(run.source_id), TAG_TENANT: source.tenant_name, TAG_SYNC_RUN: str(run.id),
                      TAG_TRIGGER: run.trigger, "quarry/source_name": source.name},
            ))
        elif run.status == "running" and run.dagster_run_id:
            dagster_run = context.instance.get_run_by_id(run.dagster_run_id)
            if dagster_run is not None and dagster_run.status in _ENDED:
                failures.append((run.id, f"interrupted: its Dagster run ended ({dagster_run.status.value})",
                                 "running"))
    if failures:
        asyncio.run(_fail_rows(postgres.database_url, failures))
    _fail_dead_workers(context, postgres.database_url)
    partition_requests: list[Any] = []
    if added:
        partition_requests.append(SOURCES_PARTITIONS.build_add_request(added))
    if removed:
        partition_requests.append(SOURCES_PARTITIONS.build_delete_request(removed))
    if added or removed or requests:
        context.log.info(f"partitions +{len(added)} -{len(removed)}; {len(requests)} run request(s)")
    return SensorResult(run_requests=requests, dynamic_partitions_requests=partition_requests)


def _dagster_run_ended(context: SensorEvaluationContext, run_key_tag: str) -> bool:
    records = context.instance.get_runs(filters=RunsFilter(tags={TAG_SYNC_RUN: run_key_tag}), limit=1)
    return bool(records) and records[0].status in _ENDED


async def _unlocked(database_url: str, source_ids: list[str]) -> set[str]:
    """Sources whose advisory lock nobody holds (taken and released at once)."""
    conn = await asyncpg.connect(database_url)
    try:
        free = set()
        for source_id in source_ids:
            key = source_repo.lock_key(source_id)
            if await conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", key):
                await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", key)
                free.add(source_id)
        return free
    finally:
        await conn.close()


def _fail_dead_workers(context: SensorEvaluationContext, database_url: str) -> None:
    records = context.instance.get_run_records(
        filters=RunsFilter(job_name=sync_job.name, statuses=[DagsterRunStatus.STARTED]), limit=50)
    now = datetime.now(UTC).timestamp()
    old = [r for r in records if r.start_time and now - r.start_time > _DEAD_WORKER_AFTER_S
           and r.dagster_run.tags.get(TAG_SOURCE)]
    if not old:
        return
    free = asyncio.run(_unlocked(database_url, [r.dagster_run.tags[TAG_SOURCE] for r in old]))
    for record in old:
        if record.dagster_run.tags[TAG_SOURCE] in free:
            context.instance.report_run_failed(
                record.dagster_run, "the run worker is gone: the run holds no lock on its source")
            context.log.warning(f"failed dead sync run {record.dagster_run.run_id}")
