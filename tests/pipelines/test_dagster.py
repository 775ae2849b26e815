"""Dagster definitions in-process against the test database: the sync multi-asset, the
sources sensor (partitions, run-now, schedules), asset checks."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from dagster import (
    AddDynamicPartitionsRequest,
    AssetKey,
    DagsterInstance,
    Definitions,
    DeleteDynamicPartitionsRequest,
    build_sensor_context,
)
from litestar.testing import AsyncTestClient

from api.app import create_app
from core.settings import load_settings
from pipelines.checks import CHECKS
from pipelines.definitions import checks_job, defs
from pipelines.resources import PostgresResource, QuarryResource
from pipelines.sensors import due_tick, sources_sensor
from storage.repositories import sync_runs
from storage.tenancy import tenant_tx
from tests.ingest_helpers import new_collection
from tests.pipelines.dagster_helpers import materialize_source, share_embedder


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as inst:
        yield inst


@pytest.fixture(autouse=True)
def dagster_env(monkeypatch, folder_root, tmp_path, worker_ctx):
    monkeypatch.setenv("QUARRY_CONNECTOR_FOLDER_ROOTS", str(folder_root))
    monkeypatch.setenv("QUARRY_DATA_DIR", str(tmp_path / "data"))
    share_embedder(worker_ctx["embedder"])


@pytest.fixture
async def api(settings, folder_root):
    custom = msgspec.structs.replace(settings, connector_folder_roots=str(folder_root))
    async with AsyncTestClient(app=create_app(custom)) as client:
        yield client


def test_definitions_load_with_lineage():
    Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    assert graph.get(AssetKey("chunks")).parent_keys == {AssetKey("source_documents")}
    assert graph.get(AssetKey("embeddings")).parent_keys == {AssetKey("chunks")}
    assert defs.resolve_sensor_def("sources_sensor").minimum_interval_seconds <= 10
    check_keys = {key.name for key in graph.asset_check_keys}
    assert {"embeddings_complete", "no_orphans", "documents_match_last_run"} <= check_keys


def _evaluate(instance, admin_url):
    context = build_sensor_context(instance=instance, resources={"postgres": PostgresResource(database_url=admin_url),
                                                                 "quarry": QuarryResource(database_url=admin_url)})
    return sources_sensor(context)


async def test_sensor_picks_up_api_source_and_run_now(api, make_tenant, instance, admin_url, tenant_dir, pool):
    tenant = await make_tenant()
    (tenant_dir(tenant.id) / "guide.md").write_text("# Guide\n\nFeldspar is the most common mineral group.")
    collection_id = await new_collection(api, tenant.headers)
    r = await api.post("/v1/sources", json={"name": "guide", "kind": "folder", "collection_id": collection_id,
                                            "config": {"path": "."}}, headers=tenant.headers)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]

    result = await asyncio.to_thread(_evaluate, instance, admin_url)
    added = [k for req in result.dynamic_partitions_requests if isinstance(req, AddDynamicPartitionsRequest)
             for k in req.partition_keys]
    assert sid in added
    assert not [q for q in result.run_requests if q.partition_key == sid]  # nothing requested yet
    instance.add_dynamic_partitions("sources", added)

    r = await api.post(f"/v1/sources/{sid}/sync", headers=tenant.headers)
    run_id = r.json()["run"]["id"]
    result = await asyncio.to_thread(_evaluate, instance, admin_url)
    [request] = [q for q in result.run_requests if q.partition_key == sid]
    assert request.run_key == f"sync:{run_id}"
    assert request.tags["quarry/sync_run_id"] == run_id and request.tags["quarry/trigger"] == "api"
    assert request.tags["quarry/tenant"] == tenant.tenant.name and request.tags["quarry/source"] == sid
    assert request.tags["dagster/max_runtime"] == str(int(load_settings(dotenv=None).sync_max_runtime_s) + 300)

    # Launch it as the daemon would: the run claims the queued row and materialises the assets.
    outcome = await materialize_source(instance, admin_url, sid, tags=dict(request.tags))
    assert outcome.success
    materialized = {m.asset_key.path[-1]: m for m in outcome.asset_materializations_for_node("source_sync")}
    assert set(materialized) == {"source_documents", "chunks", "embeddings"}
    assert materialized["source_documents"].metadata["added"].value == 1
    assert materialized["embeddings"].metadata["embedder"].text == "minilm-l6-v2"
    runs = (await api.get(f"/v1/sources/{sid}/runs", headers=tenant.headers)).json()["items"]
    assert [x["id"] for x in runs] == [run_id]
    assert runs[0]["status"] == "succeeded" and runs[0]["dagster_run_id"] == outcome.run_id
    assert runs[0]["added"] == 1 and runs[0]["duration_ms"] is not None

    # The request is not repeated once the run claimed its row; deleting the source drops its partition.
    result = await asyncio.to_thread(_evaluate, instance, admin_url)
    assert not [q for q in result.run_requests if q.partition_key == sid]
    assert (await api.delete(f"/v1/sources/{sid}", headers=tenant.headers)).status_code == 204
    result = await asyncio.to_thread(_evaluate, instance, admin_url)
    removed = [k for req in result.dynamic_partitions_requests if isinstance(req, DeleteDynamicPartitionsRequest)
               for k in req.partition_keys]
    assert sid in removed


async def test_sensor_queues_due_schedule_once(api, make_tenant, instance, admin_url, tenant_dir, owner_pool, pool):
    tenant = await make_tenant()
    tenant_dir(tenant.id)
    collection_id = await new_collection(api, tenant.headers)
    r = await api.post("/v1/sources", json={"name": "hourly", "kind": "folder", "collection_id": collection_id,
                                            "config": {"path": "."}, "schedule": "* * * * *"},
                       headers=tenant.headers)
    sid = r.json()["id"]
    async with owner_pool.acquire() as conn:  # as if created a few minutes ago
        await conn.execute("UPDATE sources SET updated_at = now() - interval '5 minutes' WHERE id = $1", r.json()["id"])
    first = await asyncio.to_thread(_evaluate, instance, admin_url)
    [request] = [q for q in first.run_requests if q.partition_key == sid]
    assert request.tags["quarry/trigger"] == "schedule"
    second = await asyncio.to_thread(_evaluate, instance, admin_url)
    assert [q.run_key for q in second.run_requests if q.partition_key == sid] == [request.run_key]
    async with tenant_tx(pool, tenant.id, readonly=True) as conn:
        queued = await sync_runs.list_runs(conn, r.json()["id"], before=None, limit=10)
    assert [(x.status, x.trigger) for x in queued] == [("queued", "schedule")]
    # Disabled: no more ticks are queued.
    await api.post(f"/v1/sources/{sid}/disable", headers=tenant.headers)
    async with owner_pool.acquire() as conn:
        await conn.execute("UPDATE sync_runs SET status = 'canceled' WHERE source_id = $1", r.json()["id"])
        await conn.execute("UPDATE sources SET last_scheduled_at = now() - interval '3 minutes' WHERE id = $1",
                           r.json()["id"])
    third = await asyncio.to_thread(_evaluate, instance, admin_url)
    assert not [q for q in third.run_requests if q.partition_key == sid]


def test_due_tick():
    now = datetime(2026, 1, 1, 12, 30, 10, tzinfo=UTC)
    assert due_tick("*/15 * * * *", now - timedelta(minutes=20), now) == datetime(2026, 1, 1, 12, 30, tzinfo=UTC)
    assert due_tick("*/15 * * * *", datetime(2026, 1, 1, 12, 30, tzinfo=UTC), now) is None
    assert due_tick("0 0 * * *", now - timedelta(hours=1), now) is None


async def test_failed_sync_fails_the_dagster_run(make_tenant, make_source, instance, admin_url, tenant_dir):
    tenant = await make_tenant()
    gone = tenant_dir(tenant.id) / "gone"
    gone.mkdir()
    source = await make_source(tenant.id, "folder", {"path": str(gone)})
    gone.rmdir()
    outcome = await materialize_source(instance, admin_url, str(source.id))
    assert not outcome.success


def _run_checks(admin_url):
    checks_defs = Definitions(asset_checks=CHECKS, jobs=[checks_job],
                              resources={"postgres": PostgresResource(database_url=admin_url)})
    result = checks_defs.resolve_job_def("corpus_checks_job").execute_in_process()
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


async def test_asset_checks(make_tenant, make_source, make_deps, sync_settings, tenant_dir, admin_url, owner_pool):
    from pipelines.sync import sync_source

    tenant = await make_tenant()
    folder = tenant_dir(tenant.id)
    (folder / "a.md").write_text("Gneiss is banded.")
    (folder / "b.md").write_text("Schist is flaky.")
    source = await make_source(tenant.id, "folder", {"path": str(folder)})
    await sync_source(make_deps(sync_settings), tenant.id, source.id)
    ok = await asyncio.to_thread(_run_checks, admin_url)
    assert all(e.passed for e in ok.values()), {k: e.metadata for k, e in ok.items()}

    async with owner_pool.acquire() as conn:  # break both invariants outside any sync run
        await conn.execute("""DELETE FROM embeddings WHERE chunk_id = (SELECT min(c.id) FROM chunks c
                              JOIN documents d ON d.id = c.document_id WHERE d.source_id = $1)""", source.id)
        await conn.execute("DELETE FROM documents WHERE source_id = $1 AND uri = 'b.md'", source.id)
    try:
        bad = await asyncio.to_thread(_run_checks, admin_url)
        assert not bad["embeddings_complete"].passed
        assert bad["embeddings_complete"].metadata["chunks_missing_active_embedding"].value >= 1
        assert not bad["documents_match_last_run"].passed
        assert bad["no_orphans"].passed
    finally:
        async with owner_pool.acquire() as conn:
            await conn.execute("DELETE FROM collections WHERE id = $1", source.collection_id)


def test_dagster_yaml_limits_runs_per_tenant_and_source(repo_root, monkeypatch):
    """dagster.yaml passes Dagster's instance-config validation, and its queue limits hold a
    tenant to two runs (and a source to one) while other tenants' runs still start."""
    from dagster import DagsterRun
    from dagster._config import validate_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster._utils.tags import TagConcurrencyLimitsCounter

    monkeypatch.setenv("QUARRY_DAGSTER_PG_URL", "postgresql+psycopg2://u:p@127.0.0.1:1/dagster")
    config, _ = dagster_instance_config(str(repo_root))
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    checked = validate_config(QueuedRunCoordinator.config_type(), config["run_coordinator"]["config"])
    assert checked.success, checked.errors
    assert config["run_monitoring"]["enabled"] is True

    def run(tenant, source):
        return DagsterRun(job_name="source_sync_job", tags={"quarry/tenant": tenant, "quarry/source": source})

    limits = TagConcurrencyLimitsCounter(checked.value["tag_concurrency_limits"], [run("a", "a1"), run("a", "a2")])
    assert limits.is_blocked(run("a", "a3"))  # tenant a has its two runs in progress
    assert not limits.is_blocked(run("b", "b1"))  # tenant b is not held back by a
    limits.update_counters_with_launched_item(run("b", "b1"))
    assert limits.is_blocked(run("b", "b1")) and not limits.is_blocked(run("b", "b2"))  # one run per source


async def test_sensor_fails_stale_running_rows_and_frees_wedged_locks(
    make_tenant, make_source, instance, admin_url, tenant_dir, pool, owner_pool
):
    from dagster import DagsterRun, DagsterRunStatus

    from pipelines.sync import lock_holder_name
    from storage.repositories import sources as source_repo

    tenant = await make_tenant()
    tenant_dir(tenant.id)
    crashed, wedged, alive = [await make_source(tenant.id, "folder", {"path": "."}) for _ in range(3)]
    rows = {}
    for source, dagster_id in ((crashed, "run-that-crashed"), (wedged, "run-that-hung"), (alive, "run-still-going")):
        async with tenant_tx(pool, tenant.id) as conn:
            rows[source.id] = await sync_runs.claim_run(conn, tenant_id=tenant.id, source_id=source.id, run_id=None,
                                                        trigger="api", dagster_run_id=dagster_id)
    # The hung run's Dagster run was failed by its max runtime; its process still holds the lock.
    instance.add_run(DagsterRun(job_name="source_sync_job", run_id="run-that-hung", status=DagsterRunStatus.FAILURE))
    instance.add_run(DagsterRun(job_name="source_sync_job", run_id="run-still-going", status=DagsterRunStatus.STARTED))
    holders = {}
    for source, dagster_id in ((wedged, "run-that-hung"), (alive, "run-still-going")):
        holder = await owner_pool.acquire()
        await holder.execute("SELECT set_config('application_name', $1, false)", lock_holder_name(dagster_id))
        assert await holder.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                                     source_repo.lock_key(source.id))
        holders[source.id] = holder
    try:
        await asyncio.to_thread(_evaluate, instance, admin_url)
        async with tenant_tx(pool, tenant.id, readonly=True) as conn:
            status = {s.id: await sync_runs.get_run(conn, rows[s.id].id) for s in (crashed, wedged, alive)}
        assert status[crashed.id].status == "failed" and "no process" in status[crashed.id].errors[-1]["error"]
        assert status[wedged.id].status == "failed" and "connection was ended" in status[wedged.id].errors[-1]["error"]
        assert status[alive.id].status == "running"  # a live run holding its lock is left alone
        async with owner_pool.acquire() as probe:  # the wedged run's lock is free again, the live one's is not
            assert await probe.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                                        source_repo.lock_key(wedged.id))
            assert not await probe.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                                            source_repo.lock_key(alive.id))
            await probe.execute("SELECT pg_advisory_unlock_all()")
    finally:
        for holder in holders.values():
            await owner_pool.release(holder)
