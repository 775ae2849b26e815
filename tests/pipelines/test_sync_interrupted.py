"""A sync killed mid-way (SIGKILL: no cleanup at all), then run again: no duplicates, the
finished items are not redone, the dead run is marked failed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

from api.app import app_database_url
from pipelines.sync import SyncBusy, sync_source
from rag.embedders import HashingEmbedder
from storage.repositories import sync_runs
from storage.tenancy import tenant_tx

N = 12


async def test_killed_sync_then_rerun(pool, owner_pool, make_tenant, make_source, make_deps, sync_settings,
                                      folder_root, tenant_dir, tmp_path, repo_root):
    tenant = await make_tenant()
    folder = tenant_dir(tenant.id)
    for i in range(N):
        (folder / f"doc-{i:02}.md").write_text(f"# Doc {i}\n\nDocument number {i} describes mineral {i}.")
    source = await make_source(tenant.id, "folder", {"path": str(folder)})
    hashing = HashingEmbedder()
    async with owner_pool.acquire() as conn:
        await conn.execute("UPDATE collections SET active_embedder = $2 WHERE id = $1", source.collection_id,
                           hashing.name)

    child = subprocess.Popen(  # noqa: ASYNC220 - killed by the test, never awaited
        [sys.executable, "-m", "tests.pipelines.sync_child", app_database_url(sync_settings), str(tenant.id),
         str(source.id), str(folder_root), str(tmp_path / "child-scratch")],
        cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        done = 0
        while time.monotonic() < deadline:
            async with owner_pool.acquire() as conn:
                done = await conn.fetchval("SELECT count(*) FROM documents WHERE source_id = $1", source.id)
            if done >= 3 or child.poll() is not None:
                break
            await asyncio.sleep(0.05)
        assert child.poll() is None, child.communicate()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()
    async with owner_pool.acquire() as conn:
        done = await conn.fetchval("SELECT count(*) FROM documents WHERE source_id = $1", source.id)
    assert 3 <= done < N, done

    # Postgres releases the killed run's advisory lock when it notices the dead client; on a
    # loaded machine that can take a moment, and a run meanwhile is refused (SyncBusy) —
    # which is the no-overlap guarantee working. Retry until the lock is gone.
    deadline = time.monotonic() + 30
    while True:
        try:
            report = await sync_source(make_deps(sync_settings, embedders=[hashing]), tenant.id, source.id)
            break
        except SyncBusy:
            assert time.monotonic() < deadline, "the killed run's lock was never released"
            await asyncio.sleep(0.2)
    run = report.run
    assert run.status == "succeeded", run.errors
    assert run.added == N - done and run.skipped == done and run.updated == 0
    async with owner_pool.acquire() as conn:
        docs = await conn.fetch("SELECT uri, status, chunk_count FROM documents WHERE source_id = $1", source.id)
        chunks = await conn.fetchval("""SELECT count(*) FROM chunks c JOIN documents d ON d.id = c.document_id
                                        WHERE d.source_id = $1""", source.id)
        dupes = await conn.fetchval("""SELECT count(*) FROM (SELECT document_id, ord FROM chunks c
                                       JOIN documents d ON d.id = c.document_id WHERE d.source_id = $1
                                       GROUP BY document_id, ord HAVING count(*) > 1) x""", source.id)
    assert len(docs) == N and len({d["uri"] for d in docs}) == N
    assert all(d["status"] == "ready" for d in docs)
    assert chunks == sum(d["chunk_count"] for d in docs) and dupes == 0
    async with tenant_tx(pool, tenant.id, readonly=True) as conn:
        runs = await sync_runs.list_runs(conn, source.id, before=None, limit=5)
    assert [r.status for r in runs] == ["succeeded", "failed"]
    assert "interrupted" in runs[1].errors[-1]["error"]
