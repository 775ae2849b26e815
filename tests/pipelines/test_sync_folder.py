"""Folder sync: add → modify → delete, cursors, one bad file, no overlap, killed run."""

from __future__ import annotations

import asyncio
import os
import threading

import msgspec
import psutil
import pytest

from pipelines.sync import SyncBusy, sync_source
from storage.repositories import sources, sync_runs
from storage.tenancy import tenant_tx


async def _docs(pool, tenant_id, source_id):
    async with tenant_tx(pool, tenant_id, readonly=True) as conn:
        rows = await conn.fetch(
            """SELECT d.uri, d.status, d.content_hash, d.chunk_count,
                      (SELECT count(*) FROM chunks c WHERE c.document_id = d.id) AS chunks,
                      (SELECT count(*) FROM embeddings e JOIN chunks c ON c.id = e.chunk_id
                        WHERE c.document_id = d.id) AS embeddings
               FROM documents d WHERE d.source_id = $1 ORDER BY d.uri""", source_id)
    return {r["uri"]: dict(r) for r in rows}


async def test_add_modify_delete_cycle(pool, make_tenant, make_source, make_deps, sync_settings, tenant_dir):
    tenant = await make_tenant()
    folder = tenant_dir(tenant.id)
    (folder / "a.md").write_text("# Alpha\n\nThe alpha document talks about granite quarries.")
    (folder / "sub").mkdir()
    (folder / "sub" / "b.txt").write_text("Basalt columns form when lava cools slowly.")
    (folder / "skip.log").write_text("not included")
    source = await make_source(tenant.id, "folder", {"path": str(folder), "include": ["**/*.md", "**/*.txt"]})
    deps = make_deps(sync_settings)

    first = await sync_source(deps, tenant.id, source.id)
    assert first.run.status == "succeeded", first.run.errors
    run = first.run
    assert (run.added, run.updated, run.deleted, run.skipped, run.failed) == (2, 0, 0, 0, 0)
    docs = await _docs(pool, tenant.id, source.id)
    assert set(docs) == {"a.md", "sub/b.txt"}
    assert all(d["status"] == "ready" and d["chunks"] >= 1 and d["embeddings"] == d["chunks"] for d in docs.values())

    # Unchanged: nothing re-parsed or re-embedded.
    second = await sync_source(deps, tenant.id, source.id)
    assert (second.run.added, second.run.updated, second.run.skipped) == (0, 0, 2)
    assert second.run.chunks_written == 0

    # Touched but identical bytes: skipped by hash; modified: replaced; deleted: removed.
    os.utime(folder / "a.md", ns=(1, 1))
    (folder / "sub" / "b.txt").write_text("Basalt columns form when lava cools slowly. Now with obsidian.")
    (folder / "c.md").write_text("Chalk is a soft white limestone.")
    third = await sync_source(deps, tenant.id, source.id)
    assert (third.run.added, third.run.updated, third.run.skipped, third.run.deleted) == (1, 1, 1, 0), third.run
    docs3 = await _docs(pool, tenant.id, source.id)
    assert docs3["sub/b.txt"]["content_hash"] != docs["sub/b.txt"]["content_hash"]
    async with tenant_tx(pool, tenant.id, readonly=True) as conn:
        texts = [r["text"] for r in await conn.fetch(
            "SELECT c.text FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.uri = 'sub/b.txt' "
            "AND d.source_id = $1", source.id)]
    assert any("obsidian" in t for t in texts)

    (folder / "a.md").unlink()
    fourth = await sync_source(deps, tenant.id, source.id)
    assert (fourth.run.deleted, fourth.run.skipped) == (1, 2)
    docs4 = await _docs(pool, tenant.id, source.id)
    assert set(docs4) == {"c.md", "sub/b.txt"}
    assert fourth.run.documents_total == 2 and fourth.run.complete is True

    async with tenant_tx(pool, tenant.id, readonly=True) as conn:
        runs = await sync_runs.list_runs(conn, source.id, before=None, limit=10)
    assert [r.status for r in runs] == ["succeeded"] * 4
    assert all(r.duration_ms is not None and r.duration_ms >= 0 for r in runs)


async def test_bad_file_fails_alone(pool, make_tenant, make_source, make_deps, sync_settings, tenant_dir):
    tenant = await make_tenant()
    folder = tenant_dir(tenant.id)
    (folder / "good.md").write_text("Good content about sandstone.")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (folder / "empty.txt").write_text("")
    source = await make_source(tenant.id, "folder", {"path": str(folder)})
    report = await sync_source(make_deps(sync_settings), tenant.id, source.id)
    assert report.run.status == "succeeded"
    assert (report.run.added, report.run.failed) == (1, 2)
    failed = {e["uri"] for e in report.run.errors}
    assert failed == {"broken.pdf", "empty.txt"}
    assert set(await _docs(pool, tenant.id, source.id)) == {"good.md"}


async def test_missing_folder_fails_run_and_deletes_nothing(
    pool, make_tenant, make_source, make_deps, sync_settings, tenant_dir
):
    tenant = await make_tenant()
    folder = tenant_dir(tenant.id)
    sub = folder / "mount"
    sub.mkdir()
    (sub / "x.md").write_text("Quartzite is metamorphosed sandstone.")
    source = await make_source(tenant.id, "folder", {"path": str(sub)})
    deps = make_deps(sync_settings)
    assert (await sync_source(deps, tenant.id, source.id)).run.added == 1
    (sub / "x.md").unlink()
    sub.rmdir()
    report = await sync_source(deps, tenant.id, source.id)
    assert report.run.status == "failed"
    error = report.run.errors[0]["error"]
    assert "not an existing directory" in error or "does not exist" in error
    assert set(await _docs(pool, tenant.id, source.id)) == {"x.md"}


async def test_two_runs_never_overlap(pool, make_tenant, make_source, make_deps, sync_settings, tenant_dir):
    tenant = await make_tenant()
    folder = tenant_dir(tenant.id)
    (folder / "a.md").write_text("Marble takes a polish.")
    source = await make_source(tenant.id, "folder", {"path": str(folder)})
    async with pool.acquire() as holder:  # another process's run holds the source
        key = sources.lock_key(source.id)
        assert await holder.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", key)
        try:
            async with tenant_tx(pool, tenant.id) as conn:
                queued, _ = await sync_runs.request_run(conn, tenant.id, source.id, "api")
            with pytest.raises(SyncBusy):
                await sync_source(make_deps(sync_settings), tenant.id, source.id, run_id=queued.id)
        finally:
            await holder.execute("SELECT pg_advisory_unlock_all()")
    async with tenant_tx(pool, tenant.id, readonly=True) as conn:
        run = await sync_runs.get_run(conn, queued.id)
    assert run.status == "failed" and "in progress" in run.errors[-1]["error"]
    # Once free, the next run works.
    assert (await sync_source(make_deps(sync_settings), tenant.id, source.id)).run.added == 1


async def test_concurrent_runs_one_wins(pool, make_tenant, make_source, make_deps, sync_settings, tenant_dir):
    tenant = await make_tenant()
    folder = tenant_dir(tenant.id)
    for i in range(3):
        (folder / f"{i}.md").write_text(f"Document {i} about slate and shale.")
    source = await make_source(tenant.id, "folder", {"path": str(folder)})
    deps = make_deps(sync_settings)
    results = await asyncio.gather(*(sync_source(deps, tenant.id, source.id) for _ in range(2)),
                                   return_exceptions=True)
    assert sum(isinstance(r, SyncBusy) for r in results) == 1, results
    assert len(await _docs(pool, tenant.id, source.id)) == 3


async def test_cross_tenant_folder_attempts_read_nothing(
    pool, make_tenant, make_source, make_deps, sync_settings, tenant_dir, folder_root
):
    victim, attacker = await make_tenant(), await make_tenant()
    theirs = tenant_dir(victim.id)
    (theirs / "payroll.md").write_text("Victim payroll: the CEO earns a secret amount.")
    mine = tenant_dir(attacker.id)
    (mine / "to-victim").symlink_to(theirs)
    (mine / "docs").mkdir()
    (mine / "docs" / "payroll.md").symlink_to(theirs / "payroll.md")
    deps = make_deps(sync_settings)
    # Stored as if validation had been bypassed: the sync validates again.
    for path in (f"../{victim.id}", str(theirs), str(folder_root), "to-victim", str(mine / "to-victim"), "/"):
        source = await make_source(attacker.id, "folder", {"path": path})
        run = (await sync_source(deps, attacker.id, source.id)).run
        assert run.status == "failed" and "inside this tenant's folder" in run.errors[0]["error"], (path, run.errors)
    linked = await make_source(attacker.id, "folder", {"path": "docs"})
    run = (await sync_source(deps, attacker.id, linked.id)).run
    assert run.status == "succeeded" and run.added == 0
    async with tenant_tx(pool, attacker.id, readonly=True) as conn:
        assert await conn.fetchval("SELECT count(*) FROM documents") == 0
        assert await conn.fetchval("SELECT count(*) FROM chunks") == 0



async def test_hung_run_is_stopped_at_its_max_runtime_and_frees_its_lock(
    pool, make_tenant, make_source, make_deps, sync_settings, tenant_dir, monkeypatch
):
    from rag.connectors.folder import FolderConnector

    tenant = await make_tenant()
    folder = tenant_dir(tenant.id)
    (folder / "a.md").write_text("Andesite is a volcanic rock.")
    (folder / "b.md").write_text("Basalt is darker.")
    source = await make_source(tenant.id, "folder", {"path": "."})
    release = threading.Event()
    real_read = FolderConnector._read

    def hung_read(self, folder_fd, parts):  # a read that never returns (a dead network mount)
        if parts[-1] == "b.md":
            release.wait()
        return real_read(self, folder_fd, parts)

    monkeypatch.setattr(FolderConnector, "_read", hung_read)
    deps = make_deps(msgspec.structs.replace(sync_settings, sync_max_runtime_s=1.0))
    try:
        report = await sync_source(deps, tenant.id, source.id)
    finally:
        release.set()
    run = report.run
    assert run.status == "failed" and "QUARRY_SYNC_MAX_RUNTIME_S" in run.errors[0]["error"], run.errors
    assert run.added <= 1 and run.deleted == 0 and run.complete is None  # a.md may or may not have made it
    async with pool.acquire() as probe:  # the lock is free: the next run can start
        assert await probe.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                                    sources.lock_key(source.id))
        await probe.execute("SELECT pg_advisory_unlock_all()")
    monkeypatch.setattr(FolderConnector, "_read", real_read)
    again = (await sync_source(make_deps(sync_settings), tenant.id, source.id)).run
    assert again.status == "succeeded" and (again.added, again.skipped) == (2 - run.added, run.added)


async def test_an_item_whose_parse_hangs_is_killed_and_fails_alone(
    pool, make_tenant, make_source, make_deps, sync_settings, tenant_dir, tmp_path
):
    """Synced items are parsed in the same killable processes as uploads: one that spins in a C
    regex is killed at the parse timeout and fails alone; the run goes on."""
    from rag.embedders import tokenizer_path
    from rag.parse_pool import ParsePool
    from tests.jobs.hostile import catastrophic_regex

    tenant = await make_tenant()
    folder = tenant_dir(tenant.id)
    (folder / "spins.txt").write_text("A document its parser never finishes.")
    source = await make_source(tenant.id, "folder", {"path": str(folder)})
    parser = ParsePool(tokenizer_path(), workers=1, timeout_s=1, max_memory_mb=1024, parse=catastrophic_regex)
    await parser.start()
    try:
        deps = make_deps(sync_settings)
        deps.parser = parser
        report = await sync_source(deps, tenant.id, source.id)
    finally:
        await asyncio.to_thread(parser.close)
    assert report.run.status == "succeeded", report.run.errors
    assert report.run.failed == 1
    assert "longer than 1 s" in report.run.errors[0]["error"], report.run.errors
    # The hostile parser wrote its pid beside the item's scratch copy (make_deps: tmp_path/scratch).
    pids = [int(p.read_text()) for p in (tmp_path / "scratch").glob("*.pid")]
    assert pids and not any(psutil.pid_exists(pid) for pid in pids)
