"""Parsing runs in killable worker processes: a document that takes too long or too much memory
fails with the reason, its process is gone before its tenant slot is freed, and nothing stays
`processing` - also when the job is cancelled or its worker died.

The hostile documents are parsing functions (tests/jobs/hostile.py) given to a real ParsePool:
the job, the pool, the limits and the kill are the production code; only what the parser does
is chosen, so that "spins forever" and "allocates without end" are certain, not timing-dependent.
One test parses a real (large) text file under a small memory limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from jobs.ingest import ingest_document
from rag.embedders import tokenizer_path
from rag.parse_pool import ParsePool
from storage import semaphore
from tests.jobs import hostile
from tests.jobs.test_ingest_job import LONG_TEXT, add_document, blob_exists, state


@contextlib.asynccontextmanager
async def parse_pool(**kwargs: Any) -> AsyncIterator[ParsePool]:
    pool = ParsePool(tokenizer_path(), **{"workers": 1, "timeout_s": 30.0, "max_memory_mb": 1024, **kwargs})
    await pool.start()
    try:
        yield pool
    finally:
        await asyncio.to_thread(pool.close)


def recorded_pid(ctx: dict[str, Any], doc: Any) -> int:
    path = pid_path(ctx, doc)
    pid = int(path.read_text())
    path.unlink()
    return pid


class SlotReleases:
    """Each tenant slot release, with whether the watched parse process was alive at that moment."""

    def __init__(self) -> None:
        self.log: list[tuple[str, bool]] = []
        self.pid_files: list[Path] = []

    def watch(self, pid_path: Path) -> None:
        self.pid_files.append(pid_path)

    def alive_now(self) -> bool:
        return any(hostile.alive(int(p.read_text())) for p in self.pid_files if p.exists())


@pytest.fixture
def slot_releases(monkeypatch) -> SlotReleases:
    releases = SlotReleases()
    real_release = semaphore.release

    async def release(redis: Any, key: str, token: str) -> None:
        releases.log.append((key, releases.alive_now()))
        await real_release(redis, key, token)

    monkeypatch.setattr(semaphore, "release", release)
    return releases


def pid_path(ctx: dict[str, Any], doc: Any) -> Path:
    return hostile.pid_file(ctx["blobs"].path_for(doc.tenant_id, doc.content_hash))


async def test_parse_past_the_timeout_is_killed_and_fails_the_document(ctx, pool, tenant, redis, slot_releases):
    doc = await add_document(pool, ctx["blobs"], *tenant, b"Looks harmless.", "txt")
    slot_releases.watch(pid_path(ctx, doc))
    async with parse_pool(timeout_s=1.0, parse=hostile.catastrophic_regex) as parser:
        result = await ingest_document(dict(ctx, parser=parser), *doc.args())
        pid = recorded_pid(ctx, doc)
    assert result == {"status": "failed", "error": "parsing took longer than 1 s"}
    after = await state(pool, doc)
    assert after["status"] == "failed" and after["error"] == "parsing took longer than 1 s"
    assert after["attempts"] == 1  # a content problem: not retried
    assert after["chunks"] == after["embeddings"] == 0
    assert not blob_exists(ctx, doc)
    assert not hostile.alive(pid)
    key = f"quarry:ingest:slots:{doc.tenant_id}"
    assert await redis.zcard(key) == 0
    # The slot was released once, and by then the process stuck in C code was gone.
    assert [(k, still) for k, still in slot_releases.log if k == key] == [(key, False)]


async def test_memory_hog_fails_the_document_with_the_memory_reason(ctx, pool, tenant, redis):
    doc = await add_document(pool, ctx["blobs"], *tenant, b"Looks harmless too.", "txt")
    async with parse_pool(max_memory_mb=1024, parse=hostile.memory_hog) as parser:
        result = await ingest_document(dict(ctx, parser=parser), *doc.args())
        recorded_pid(ctx, doc)
        # The pool goes on: the hog's memory was freed with its MemoryError.
        assert await parser.isolated.run(len, "still serving") == len("still serving")
    assert result == {"status": "failed", "error": "parsing needed more than 1024 MB of memory"}
    after = await state(pool, doc)
    assert after["status"] == "failed" and after["error"] == "parsing needed more than 1024 MB of memory"
    assert await redis.zcard(f"quarry:ingest:slots:{doc.tenant_id}") == 0


async def test_a_real_document_over_the_memory_limit_fails(ctx, pool, tenant):
    # ~4 MB of text: chunking it needs some 300 MB more than a worker starts with.
    paragraph = "The keeper logged the storm, the ships and the birds on the gallery rail. " * 6 + "\n\n"
    data = (paragraph * (4 * 1024 * 1024 // len(paragraph))).encode()
    doc = await add_document(pool, ctx["blobs"], *tenant, data, "txt")
    async with parse_pool(max_memory_mb=400) as parser:
        result = await ingest_document(dict(ctx, parser=parser), *doc.args())
    assert result["status"] == "failed"
    assert "400 MB" in result["error"] and "memory" in result["error"], result
    assert (await state(pool, doc))["status"] == "failed"


async def test_cancelled_job_kills_the_parse_and_requeues_the_document(ctx, pool, tenant, redis, slot_releases):
    doc = await add_document(pool, ctx["blobs"], *tenant, LONG_TEXT.encode(), "txt")
    slot_releases.watch(pid_path(ctx, doc))
    async with parse_pool(parse=hostile.catastrophic_regex) as parser:
        job = asyncio.create_task(ingest_document(dict(ctx, parser=parser), *doc.args()))
        while not pid_path(ctx, doc).exists() and not job.done():  # noqa: ASYNC110 - a file, not an event
            await asyncio.sleep(0.02)
        assert (await state(pool, doc))["status"] == "processing"
        job.cancel()  # as arq does on shutdown
        with pytest.raises(asyncio.CancelledError):
            await job
        pid = recorded_pid(ctx, doc)
        assert not hostile.alive(pid)
    after = await state(pool, doc)
    assert after["status"] == "queued" and after["error"] == "interrupted (the worker stopped); will be retried"
    key = f"quarry:ingest:slots:{doc.tenant_id}"
    assert await redis.zcard(key) == 0
    assert [(k, still) for k, still in slot_releases.log if k == key] == [(key, False)]
    # arq runs a cancelled job again: this time the document is parsed.
    assert (await ingest_document(ctx, *doc.args()))["status"] == "ready"
    assert (await state(pool, doc))["attempts"] == 2


async def test_job_past_its_deadline_fails_the_document(ctx, pool, tenant, redis):
    doc = await add_document(pool, ctx["blobs"], *tenant, b"Waits behind nothing.", "txt")
    async with parse_pool(parse=hostile.catastrophic_regex) as parser:
        result = await ingest_document(dict(ctx, parser=parser, job_deadline_s=1.0), *doc.args())
        pid = recorded_pid(ctx, doc)
    assert result == {"status": "failed", "error": "ingestion took longer than 1 s"}
    after = await state(pool, doc)
    assert after["status"] == "failed" and after["error"] == "ingestion took longer than 1 s"
    assert not hostile.alive(pid)
    assert await redis.zcard(f"quarry:ingest:slots:{doc.tenant_id}") == 0


async def test_document_left_processing_by_dead_workers_is_given_up(ctx, pool, tenant, owner_pool, settings):
    doc = await add_document(pool, ctx["blobs"], *tenant, LONG_TEXT.encode(), "txt")
    # As after `ingest_max_tries` runs whose worker was killed mid-job (each claim counted).
    async with owner_pool.acquire() as conn:
        await conn.execute("UPDATE documents SET status = 'processing', attempts = $2 WHERE id = $1",
                           doc.id, settings.ingest_max_tries)
    result = await ingest_document(ctx, *doc.args())
    after = await state(pool, doc)
    assert result["status"] == after["status"] == "failed"
    tries = settings.ingest_max_tries
    assert after["error"] == f"gave up after {tries} attempts that did not finish (the worker stopped)"
    assert not blob_exists(ctx, doc)


async def test_document_left_processing_by_one_dead_worker_is_ingested(ctx, pool, tenant, owner_pool):
    doc = await add_document(pool, ctx["blobs"], *tenant, LONG_TEXT.encode(), "txt")
    async with owner_pool.acquire() as conn:
        await conn.execute("UPDATE documents SET status = 'processing', attempts = 1 WHERE id = $1", doc.id)
    assert (await ingest_document(ctx, *doc.args()))["status"] == "ready"
    after = await state(pool, doc)
    assert after["status"] == "ready" and after["attempts"] == 2 and after["chunks"] > 1


async def test_parse_errors_come_back_from_the_worker_process(ctx, pool, tenant):
    doc = await add_document(pool, ctx["blobs"], *tenant, b"%PDF-1.4 junk", "pdf")
    async with parse_pool(parse=hostile.recording) as parser:
        result = await ingest_document(dict(ctx, parser=parser), *doc.args())
        pid = recorded_pid(ctx, doc)
        assert hostile.alive(pid)  # a parse error is an answer, not a crash: the process serves on
    after = await state(pool, doc)
    assert result["status"] == after["status"] == "failed" and after["attempts"] == 1
    assert after["error"] == result["error"] and "corrupt" in after["error"], after["error"]


async def test_a_worker_killed_while_idle_is_replaced(ctx, pool, tenant):
    async with parse_pool(parse=hostile.recording) as parser:
        first = await add_document(pool, ctx["blobs"], *tenant, b"First document.", "txt")
        assert (await ingest_document(dict(ctx, parser=parser), *first.args()))["status"] == "ready"
        os.kill(recorded_pid(ctx, first), signal.SIGKILL)  # as the OOM killer would, between documents
        second = await add_document(pool, ctx["blobs"], *tenant, b"Second document.", "txt")
        assert (await ingest_document(dict(ctx, parser=parser), *second.args()))["status"] == "ready"
        recorded_pid(ctx, second)


async def test_workers_that_cannot_start_under_the_memory_limit_fail_at_startup():
    parser = ParsePool(tokenizer_path(), workers=1, timeout_s=5.0, max_memory_mb=64)
    try:
        with pytest.raises(RuntimeError, match="64 MB too low"):
            await parser.isolated.start(within_s=3.0)
    finally:
        await asyncio.to_thread(parser.close)


async def test_the_worker_settings_derive_the_job_timeout_from_the_parse_timeout(settings):
    from jobs.worker import MAX_JOBS, make_worker_settings

    quick = make_worker_settings(msgspec.structs.replace(settings, parse_timeout_s=10.0, parse_workers=MAX_JOBS))
    slow = make_worker_settings(msgspec.structs.replace(settings, parse_timeout_s=100.0, parse_workers=MAX_JOBS))
    shared = make_worker_settings(msgspec.structs.replace(settings, parse_timeout_s=100.0, parse_workers=1))
    assert quick["job_timeout"] < slow["job_timeout"] < shared["job_timeout"]
    # arq takes each function's own timeout over the worker's
    timeouts = {f.name: f.timeout_s for f in slow["functions"]}  # instrument_jobs: arq Functions
    assert timeouts["ingest_document"] == slow["job_timeout"]
    assert slow["job_timeout"] - quick["job_timeout"] == 90.0  # one parse timeout more per job
    assert shared["job_timeout"] - slow["job_timeout"] == (MAX_JOBS - 1) * 100.0  # 8 jobs share one parser


async def test_chunks_parsed_in_a_worker_equal_chunks_parsed_in_place(tmp_path: Path):
    from rag.chunking import HFTokenizer, chunk_document
    from rag.parsing import parse_file

    path = tmp_path / "doc.md"
    path.write_text("# Title\n\n" + LONG_TEXT)

    async with parse_pool() as parser:
        isolated = await parser.parse_and_chunk(path, "md", max_tokens=64, overlap_tokens=8)
    parsed = parse_file(path, "md")
    assert isolated.title == parsed.title
    assert isolated.chunks == chunk_document(parsed, HFTokenizer.from_file(tokenizer_path()), 64, 8)
