"""The sources sensor: the `sources` table drives Dagster, so a new, changed or deleted
source is picked up on the next tick without restarting anything.

Each tick (every few seconds) it
1. keeps the dynamic partitions equal to the set of source ids;
2. queues the latest due cron tick of every enabled, scheduled source (once per tick);
3. requests a run of `source_sync_job` for every queued sync run (API "run now", CLI or
   schedule), with run_key = the sync run id, so each is launched exactly once;
4. fails queued rows whose Dagster run ended without starting them, and `running` rows that
   nobody runs any more: the engine holds the source's advisory lock for as long as its row
   is running, so a running row whose lock is free is stale (a killed or crashed run, a
   Dagster run failed by its max runtime); a running row whose Dagster run ended while its
   process still holds the lock (wedged past Dagster's kill) gets that process's database
   connection terminated (found by its application_name), which frees the lock;
5. fails Dagster sync runs whose worker died (STARTED for minutes while nobody holds the
   source's advisory lock): the per-source and per-tenant limits of the run queue would
   otherwise wait on them forever.

Run requests carry `quarry/tenant` (dagster.yaml limits runs per tenant, so one tenant's slow
sources cannot take every slot) and `dagster/max_runtime` (QUARRY_SYNC_MAX_RUNTIME_S plus a
grace period: run monitoring fails a run that outlives it).

The locks are looked up in `pg_locks` rather than by taking them (which could make a
starting run fail as busy).
"""

import asyncio
import logging
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

from pipelines.resources import PostgresResource, QuarryResource
from pipelines.sync import lock_holder_name
from pipelines.sync_assets import (
    SOURCES_PARTITIONS,
    TAG_MAX_RUNTIME,
    TAG_SOURCE,
    TAG_SYNC_RUN,
    TAG_TENANT,
    TAG_TRIGGER,
    max_runtime_tag,
    sync_job,
)
from storage.repositories import sources as source_repo
from storage.repositories import sync_runs as run_repo

SENSOR_INTERVAL_S = 3
_ENDED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
_REAP_AFTER = timedelta(seconds=30)
_DEAD_WORKER_AFTER_S = 120.0
_log = logging.getLogger("quarry.pipelines.sensors")


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
        return all_sources, await run_repo.queued_runs(conn) + await run_repo.running_runs(conn)
    finally:
        await conn.close()


async def _fail_rows(database_url: str, failures: list[tuple[Any, str, Any]], terminate: list[int]) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        for pid in terminate:
            try:
                await source_repo.end_session(conn, pid)
            except asyncpg.InsufficientPrivilegeError:
                _log.warning("cannot end the connection %s of a stopped sync run (the owner role needs "
                             "pg_signal_backend); its source stays locked until that process exits", pid)
        for run_id, reason, only_if in failures:
            await run_repo.fail_run(conn, run_id, reason, only_if=only_if)
    finally:
        await conn.close()


async def _lock_holders(database_url: str, source_ids: list[str]) -> dict[str, list[tuple[int, str]]]:
    """source id -> (pid, application_name) of the sessions holding its sync lock."""
    if not source_ids:
        return {}
    conn = await asyncpg.connect(database_url)
    try:
        rows = await source_repo.lock_holders(conn, source_ids)
    finally:
        await conn.close()
    holders: dict[str, list[tuple[int, str]]] = {}
    for source_id, pid, name in rows:
        holders.setdefault(source_id, []).append((pid, name))
    return holders


@sensor(job=sync_job, minimum_interval_seconds=SENSOR_INTERVAL_S, default_status=DefaultSensorStatus.RUNNING,
        description="Keeps source partitions in step with the sources table; launches due and requested syncs.")
def sources_sensor(
    context: SensorEvaluationContext, postgres: PostgresResource, quarry: QuarryResource
) -> SensorResult:
    now = datetime.now(UTC)
    max_runtime = max_runtime_tag(quarry.settings().sync_max_runtime_s)
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
                      TAG_TRIGGER: run.trigger, TAG_MAX_RUNTIME: max_runtime, "quarry/source_name": source.name},
            ))
    stale, terminate = _stale_running(context, postgres.database_url, [r for r in runs if r.status == "running"])
    failures.extend(stale)
    if failures or terminate:
        asyncio.run(_fail_rows(postgres.database_url, failures, terminate))
    _fail_dead_workers(context, postgres.database_url)
    partition_requests: list[Any] = []
    if added:
        partition_requests.append(SOURCES_PARTITIONS.build_add_request(added))
    if removed:
        partition_requests.append(SOURCES_PARTITIONS.build_delete_request(removed))
    if added or removed or requests:
        context.log.info(f"partitions +{len(added)} -{len(removed)}; {len(requests)} run request(s)")
    return SensorResult(run_requests=requests, dynamic_partitions_requests=partition_requests)


def _stale_running(
    context: SensorEvaluationContext, database_url: str, running: list[run_repo.SyncRun]
) -> tuple[list[tuple[Any, str, Any]], list[int]]:
    """The running rows nobody will finish, and the connections of wedged runs to end."""
    holders = asyncio.run(_lock_holders(database_url, sorted({str(r.source_id) for r in running})))
    failures: list[tuple[Any, str, Any]] = []
    terminate: list[int] = []
    for run in running:
        dagster_run = context.instance.get_run_by_id(run.dagster_run_id) if run.dagster_run_id else None
        ended = f" (its Dagster run {dagster_run.status.value})" if dagster_run and dagster_run.status in _ENDED else ""
        held = holders.get(str(run.source_id), [])
        if not held:
            failures.append((run.id, f"interrupted: no process is running it any more{ended}", "running"))
        elif ended:
            wedged = [pid for pid, name in held if name == lock_holder_name(run.dagster_run_id)]
            if wedged:
                terminate.extend(wedged)
                failures.append((run.id, f"interrupted{ended}: its process still held the source; "
                                         "its database connection was ended", "running"))
                context.log.warning(f"ended the database connection of wedged sync run {run.id}")
    return failures, terminate


def _dagster_run_ended(context: SensorEvaluationContext, run_key_tag: str) -> bool:
    records = context.instance.get_runs(filters=RunsFilter(tags={TAG_SYNC_RUN: run_key_tag}), limit=1)
    return bool(records) and records[0].status in _ENDED


def _fail_dead_workers(context: SensorEvaluationContext, database_url: str) -> None:
    records = context.instance.get_run_records(
        filters=RunsFilter(job_name=sync_job.name, statuses=[DagsterRunStatus.STARTED]), limit=50)
    now = datetime.now(UTC).timestamp()
    old = [r for r in records if r.start_time and now - r.start_time > _DEAD_WORKER_AFTER_S
           and r.dagster_run.tags.get(TAG_SOURCE)]
    if not old:
        return
    held = asyncio.run(_lock_holders(database_url, sorted({r.dagster_run.tags[TAG_SOURCE] for r in old})))
    for record in old:
        if not held.get(record.dagster_run.tags[TAG_SOURCE]):
            context.instance.report_run_failed(
                record.dagster_run, "the run worker is gone: the run holds no lock on its source")
            context.log.warning(f"failed dead sync run {record.dagster_run.run_id}")
