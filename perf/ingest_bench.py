"""Ingestion throughput end to end vs the embedder's raw throughput, same run, printed as JSON.

    .venv/bin/python perf/ingest_bench.py [--chunks 1500] [--max-jobs 2] [--data-dir DIR]
        [--upload json|multipart] [--rounds 1] [--per-document-raw] [--poll-delays 0.5,0.05]

The documents come from perf/corpus.py (stdlib docstrings first, then Markov text if more is
needed) until they make --chunks chunks at the ingestion defaults (254 tokens, overlap 32).

RAW: MiniLMEmbedder.embed over exactly the chunk texts ingestion will produce (chunked here
with chunk_document + HFTokenizer and the job's settings), in one call, on the very embedder
object the worker uses. END-TO-END: embedded Postgres + Valkey (a temp dir unless --data-dir),
migrations, a tenant and a collection, every document uploaded through the real API
(create_app + litestar's AsyncTestClient) while an in-process burst arq Worker runs the real
ingest jobs (jobs.worker.FUNCTIONS, resources from startup_resources, the production worker's
poll delay) with --max-jobs concurrent jobs and the per-tenant ingestion cap set to match;
timed from the first upload to the moment every document is `ready`. The order is RAW, then
(END-TO-END, RAW) x --rounds, so a drift of the machine shows up as a difference between RAWs.

Diagnostics from the same run: the stage timings the job stores (documents.timings: parse,
chunk, embed), the write transaction's time (replace_chunks wrapped in this process only), the
embedder's busy time (its worker thread's tokenise + inference calls, wrapped likewise), and the
CPU seconds of this process and of the Postgres server during each phase.
Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import re
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from arq.connections import RedisSettings
from arq.worker import Worker
from benchlib import cpu_seconds, log, machine, md_table, running_servers, server_version, write_report
from corpus import Doc, corpus_documents
from litestar.testing import AsyncTestClient

from api.app import create_app
from core.settings import Settings, load_settings
from jobs.worker import FUNCTIONS, make_worker_settings, shutdown_resources, startup_resources
from rag.chunking import Chunk, HFTokenizer, chunk_document
from rag.embedders import tokenizer_path
from rag.parsing import parse_text
from storage.repositories import api_keys, tenants
from storage.repositories import chunks as chunks_module
from storage.tenancy import tenant_tx

ARQ_DEFAULT_POLL_DELAY = 0.5


def select_documents(target_chunks: int, seed: int, max_tokens: int, overlap: int) -> list[tuple[Doc, list[Chunk]]]:
    """Corpus documents, chunked as the ingest job will chunk them, until `target_chunks`."""
    tokenizer = HFTokenizer.from_file(tokenizer_path())
    picked: list[tuple[Doc, list[Chunk]]] = []
    total = 0
    for doc in corpus_documents(seed):
        if total >= target_chunks:
            break
        chunks = chunk_document(parse_text(doc.text, "txt"), tokenizer, max_tokens, overlap)
        picked.append((doc, chunks))
        total += len(chunks)
    return picked


class BusyMeter:
    """Sums the time spent inside wrapped callables (this process only; for diagnostics)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def wrap_sync(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1
        return wrapper

    def wrap_async(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1
        return wrapper

    def take(self) -> float:
        seconds, self.seconds, self.calls = self.seconds, 0.0, 0
        return seconds


class ServerCpu:
    """CPU seconds of a server process tree: the process, its live children, its reaped children."""

    def __init__(self, pid: int | None) -> None:
        self.proc = psutil.Process(pid) if pid else None

    def total(self) -> float:
        if self.proc is None:
            return 0.0
        try:
            times = self.proc.cpu_times()
            seconds = times.user + times.system + times.children_user + times.children_system
            for child in self.proc.children(recursive=True):
                try:
                    child_times = child.cpu_times()
                    seconds += child_times.user + child_times.system
                except psutil.NoSuchProcess:
                    continue
            return seconds
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return 0.0


class Phase:
    """Wall, this-process CPU and Postgres CPU over one phase of the benchmark."""

    def __init__(self, pg: ServerCpu) -> None:
        self.pg = pg

    def __enter__(self) -> Phase:
        self.wall0, self.cpu0, self.pg0 = time.perf_counter(), cpu_seconds(), self.pg.total()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = cpu_seconds() - self.cpu0
        self.pg_cpu = self.pg.total() - self.pg0
        self.rss = psutil.Process().memory_info().rss

    def summary(self) -> dict[str, float]:
        return {"wall_s": round(self.wall, 2), "bench_process_cpu_s": round(self.cpu, 1),
                "postgres_cpu_s": round(self.pg_cpu, 1), "bench_rss_mb_after": round(self.rss / 2**20)}


async def raw_round(embedder: Any, texts: list[str], busy: BusyMeter, pg: ServerCpu) -> dict[str, Any]:
    busy.take()
    with Phase(pg) as phase:
        vectors = await embedder.embed(texts)
    assert len(vectors) == len(texts)
    return {"chunks_per_s": round(len(texts) / phase.wall, 2), "embedder_busy_s": round(busy.take(), 2),
            **phase.summary()}


async def per_document_raw(embedder: Any, picked: list[tuple[Doc, list[Chunk]]], busy: BusyMeter,
                           pg: ServerCpu) -> dict[str, Any]:
    """One embed call per document, as the job makes them (batches never span documents)."""
    busy.take()
    n = sum(len(chunks) for _, chunks in picked)
    with Phase(pg) as phase:
        for _, chunks in picked:
            await embedder.embed([c.text for c in chunks])
    return {"chunks_per_s": round(n / phase.wall, 2), "embedder_busy_s": round(busy.take(), 2), **phase.summary()}


async def upload(client: AsyncTestClient, headers: dict[str, str], collection_id: str, doc: Doc, how: str) -> Any:
    url = f"/v1/collections/{collection_id}/documents"
    if how == "json":
        r = await client.post(url, json={"text": doc.text, "title": doc.title, "uri": doc.uri, "format": "txt"},
                              headers=headers)
    else:
        name = doc.uri.split("://", 1)[1].replace("/", "_") + ".txt"
        r = await client.post(url, files={"file": (name, doc.text.encode(), "text/plain")}, headers=headers)
    if r.status_code != 202:
        raise RuntimeError(f"upload of {doc.uri} failed: {r.status_code} {r.text[:300]}")
    return r.json()["documents"][0]["document_id"]


async def status_counts(pool: Any, tenant_id: uuid.UUID, collection_id: str) -> dict[str, int]:
    async with tenant_tx(pool, tenant_id, readonly=True) as conn:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM documents WHERE collection_id = $1 GROUP BY status",
                                uuid.UUID(collection_id))
    return {r["status"]: r["n"] for r in rows}


async def e2e_round(
    servers: Any, ctx: dict[str, Any], client: AsyncTestClient, headers: dict[str, str], tenant_id: uuid.UUID,
    picked: list[tuple[Doc, list[Chunk]]], args: argparse.Namespace, busy: BusyMeter, writes: BusyMeter,
    pg: ServerCpu, round_no: int, poll_delay: float,
) -> dict[str, Any]:
    r = await client.post("/v1/collections", json={"name": f"ingest-bench-{round_no}"}, headers=headers)
    assert r.status_code == 201, r.text
    collection_id = str(r.json()["id"])
    production = make_worker_settings(servers.settings)
    worker = Worker(
        functions=FUNCTIONS, redis_settings=RedisSettings.from_dsn(servers.settings.redis_url), burst=True,
        ctx=ctx, handle_signals=False, max_jobs=args.max_jobs, job_timeout=production["job_timeout"],
        keep_result=production["keep_result"], poll_delay=poll_delay,
    )
    expected = len(picked)
    busy.take()
    writes.take()
    worker_task: asyncio.Task[None] | None = None
    try:
        with Phase(pg) as phase:
            for doc, _ in picked:
                await upload(client, headers, collection_id, doc, args.upload)
                if worker_task is None:  # the burst worker starts once the queue holds a job
                    worker_task = asyncio.create_task(worker.main())
            uploads_s = time.perf_counter() - phase.wall0
            while True:
                counts = await status_counts(ctx["pool"], tenant_id, collection_id)
                if counts.get("ready", 0) + counts.get("failed", 0) >= expected:
                    break
                if worker_task is not None and worker_task.done():
                    worker_task.result()
                    raise RuntimeError(f"the burst worker stopped with documents unfinished: {counts}")
                await asyncio.sleep(0.1)
        assert worker_task is not None
        await worker_task
    finally:
        if worker_task is not None and not worker_task.done():
            worker_task.cancel()
        await worker.close()
    if counts.get("failed"):
        raise RuntimeError(f"{counts['failed']} documents failed")
    stored, stage = await stored_chunks(ctx["pool"], tenant_id, collection_id)
    produced = sorted(c.text for _, chunks in picked for c in chunks)
    n = len(produced)
    return {
        "poll_delay_s": poll_delay, "documents": expected, "chunks": n, "chunks_per_s": round(n / phase.wall, 2),
        "uploads_s": round(uploads_s, 2), "stored_chunks_identical_to_raw_input": stored == produced,
        "embedder_busy_s": round(busy.take(), 2), "replace_chunks_s": round(writes.take(), 2),
        "jobs": {"complete": worker.jobs_complete, "failed": worker.jobs_failed, "retried": worker.jobs_retried},
        "stage_sums_s": stage, **phase.summary(),
    }


async def stored_chunks(pool: Any, tenant_id: uuid.UUID, collection_id: str) -> tuple[list[str], dict[str, Any]]:
    async with tenant_tx(pool, tenant_id, readonly=True) as conn:
        texts = [r["text"] for r in await conn.fetch("SELECT text FROM chunks WHERE collection_id = $1",
                                                    uuid.UUID(collection_id))]
        row = await conn.fetchrow(
            """SELECT sum((timings->>'parse')::float8) / 1000 AS parse,
                      sum((timings->>'chunk')::float8) / 1000 AS chunk,
                      sum((timings->>'embed')::float8) / 1000 AS embed,
                      extract(epoch FROM sum(finished_at - started_at)) AS started_to_write,
                      extract(epoch FROM max(finished_at) - min(started_at)) AS first_start_to_last_write
               FROM documents WHERE collection_id = $1""", uuid.UUID(collection_id))
    assert row is not None
    return sorted(texts), {k: round(float(v or 0), 2) for k, v in dict(row).items()}


async def run(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
                              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    cap = args.tenant_cap or args.max_jobs
    report["config"]["tenant_cap"] = cap
    overrides: dict[str, Any] = {"ingest_concurrency_per_tenant": cap}
    if "rate_limits" in Settings.__struct_fields__:
        # Uploads are rate limited per key (a policy, not a cost): lifted so that hundreds of
        # uploads in a minute are not refused. Every other class keeps its default.
        default = load_settings(environ={}, dotenv=None).rate_limits
        lifted = re.sub(r"upload=\d+/\d+", "upload=0/0", default)
        overrides["rate_limits"] = lifted if "upload=" in lifted else f"{lifted},upload=0/0".strip(",")
        report["config"]["rate_limits"] = overrides["rate_limits"]
    async with running_servers(data_dir, **overrides) as servers:
        settings = servers.settings
        # what `quarry worker` uses (arq's default unless make_worker_settings sets one)
        production_poll = float(make_worker_settings(settings).get("poll_delay", ARQ_DEFAULT_POLL_DELAY))
        poll_delays = [float(x) for x in args.poll_delays.split(",")] if args.poll_delays else [production_poll]
        report["config"]["poll_delays"] = poll_delays
        report["config"]["production_poll_delay"] = production_poll
        report["servers"] = await server_version(servers.admin_url)
        ctx: dict[str, Any] = {}
        await startup_resources(ctx, settings)
        try:
            embedder = ctx["embedder"]
            await asyncio.to_thread(embedder.warm_up)
            max_tokens = min(settings.chunk_tokens, embedder.max_tokens - 2)  # as jobs/ingest.py
            log(f"chunking the corpus ({args.chunks} chunks, {max_tokens} tokens, overlap "
                f"{settings.chunk_overlap_tokens})")
            picked = await asyncio.to_thread(select_documents, args.chunks, args.seed, max_tokens,
                                             settings.chunk_overlap_tokens)
            texts = [c.text for _, chunks in picked for c in chunks]
            tokens = [c.token_count for _, chunks in picked for c in chunks]
            report["corpus"] = {
                "documents": len(picked), "real_documents": sum(d.kind == "real" for d, _ in picked),
                "chunks": len(texts), "mean_tokens_per_chunk": round(sum(tokens) / len(tokens), 1),
                "chunks_at_max_tokens_share": round(sum(t >= max_tokens - 8 for t in tokens) / len(tokens), 3),
                "mean_chunks_per_document": round(len(texts) / len(picked), 1),
                "chars": sum(len(d.text) for d, _ in picked), "max_tokens": max_tokens,
                "overlap_tokens": settings.chunk_overlap_tokens,
            }
            busy, writes = BusyMeter(), BusyMeter()
            original_replace_chunks = chunks_module.replace_chunks
            embedder._encode = busy.wrap_sync(embedder._encode)  # instance attributes: this process only
            embedder._infer = busy.wrap_sync(embedder._infer)
            chunks_module.replace_chunks = writes.wrap_async(chunks_module.replace_chunks)
            pg = ServerCpu(servers.postgres.proc.pid if servers.postgres.proc else None)
            await embedder.embed(texts[: embedder.batch_size])  # warm the session at full batch size

            owner = await asyncpg.connect(servers.admin_url)  # tenants are created by the owner role only
            try:
                tenant = await tenants.create_tenant(owner, f"ingest-bench-{uuid.uuid4().hex[:8]}")
            finally:
                await owner.close()
            async with tenant_tx(ctx["pool"], tenant.id) as conn:
                key, _ = await api_keys.create_key(conn, tenant.id, "admin", name="ingest-bench")
            headers = {"Authorization": f"Bearer {key}"}

            rounds: list[dict[str, Any]] = []
            log(f"RAW 1: {len(texts)} chunks")
            rounds.append({"phase": "raw", **await raw_round(embedder, texts, busy, pg)})
            log(f"  {rounds[-1]['chunks_per_s']} chunks/s")
            async with AsyncTestClient(app=create_app(settings)) as client:
                schedule = [pd for _ in range(args.rounds) for pd in poll_delays]
                for round_no, poll_delay in enumerate(schedule, start=1):
                    log(f"END-TO-END {round_no}: {len(picked)} documents, max_jobs={args.max_jobs}, "
                        f"poll delay {poll_delay} s")
                    rounds.append({"phase": "e2e", **await e2e_round(servers, ctx, client, headers, tenant.id, picked,
                                                                     args, busy, writes, pg, round_no, poll_delay)})
                    log(f"  {rounds[-1]['chunks_per_s']} chunks/s")
                    log(f"RAW {round_no + 1}")
                    rounds.append({"phase": "raw", **await raw_round(embedder, texts, busy, pg)})
                    log(f"  {rounds[-1]['chunks_per_s']} chunks/s")
            if args.per_document_raw:
                log("RAW per document")
                rounds.append({"phase": "raw_per_document", **await per_document_raw(embedder, picked, busy, pg)})
                log(f"  {rounds[-1]['chunks_per_s']} chunks/s")
        finally:
            if "original_replace_chunks" in locals():
                chunks_module.replace_chunks = original_replace_chunks
            await shutdown_resources(ctx)
    report["rounds"] = rounds
    raw = [r["chunks_per_s"] for r in rounds if r["phase"] == "raw"]
    e2e = [r["chunks_per_s"] for r in rounds if r["phase"] == "e2e"]
    raw_mean = sum(raw) / len(raw)
    n_chunks = report["corpus"]["chunks"]
    # Noise-robust view of the same ratio: e2e/raw = (share of the e2e wall time the embedder was
    # busy) x (its speed while busy in e2e / its speed in RAW). A drift of the machine moves both
    # RAW and e2e speeds; the utilisation is what the pipeline itself controls.
    raw_busy = [r["embedder_busy_s"] for r in rounds if r["phase"] == "raw"]
    raw_busy_speed = n_chunks * len(raw_busy) / sum(raw_busy)
    e2e_rows = []
    for i, r in enumerate(rounds):
        if r["phase"] != "e2e":
            continue
        # against the RAW rounds just before and just after it: the fairest reference under drift
        neighbours = [rounds[j]["chunks_per_s"] for j in (i - 1, i + 1) if rounds[j]["phase"] == "raw"]
        e2e_rows.append({
            "poll_delay_s": r["poll_delay_s"], "chunks_per_s": r["chunks_per_s"],
            "over_adjacent_raw": round(r["chunks_per_s"] / (sum(neighbours) / len(neighbours)), 3),
            "over_mean_raw": round(r["chunks_per_s"] / raw_mean, 3),
            "embedder_utilisation": round(r["embedder_busy_s"] / r["wall_s"], 3),
            "busy_speed_vs_raw": round(n_chunks / r["embedder_busy_s"] / raw_busy_speed, 3),
        })
    production = [e for e in e2e_rows if e["poll_delay_s"] == report["config"]["production_poll_delay"]]
    report["summary"] = {
        "raw_chunks_per_s": raw, "raw_mean_chunks_per_s": round(raw_mean, 2),
        "raw_spread": round((max(raw) - min(raw)) / raw_mean, 3),
        "e2e": e2e_rows, "e2e_chunks_per_s": e2e,
        "e2e_over_raw": [e["over_adjacent_raw"] for e in e2e_rows],
        "goal": "end-to-end >= 80% of raw embedder throughput (production poll delay)",
        "goal_met": all(e["over_adjacent_raw"] >= 0.8 for e in production or e2e_rows),
    }
    report["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


def markdown(report: dict[str, Any]) -> str:
    c, s = report["corpus"], report["summary"]
    rows = []
    for r in report["rounds"]:
        phase = f"e2e (poll {r['poll_delay_s']} s)" if r["phase"] == "e2e" else r["phase"]
        rows.append([phase, r["chunks_per_s"], r["wall_s"], r.get("embedder_busy_s", ""),
                     r.get("replace_chunks_s", ""), r["bench_process_cpu_s"], r["postgres_cpu_s"]])
    e2e_rounds = [r for r in report["rounds"] if r["phase"] == "e2e"]
    stage_rows = [[i + 1, r["uploads_s"], r["stage_sums_s"]["parse"], r["stage_sums_s"]["chunk"],
                   r["stage_sums_s"]["embed"], r["replace_chunks_s"], r["stage_sums_s"]["first_start_to_last_write"],
                   r["stored_chunks_identical_to_raw_input"]] for i, r in enumerate(e2e_rounds)]
    m = report["machine"]
    return "\n".join([
        f"# Ingestion benchmark — {report['date']}",
        "",
        f"Machine: {m['cpus']} CPUs, {m['platform']}, Python {m['python']}, onnxruntime {m['onnxruntime']}, "
        f"Postgres {report['servers']['postgres']} + pgvector {report['servers']['pgvector']} (embedded); "
        f"load average at start {m['loadavg_at_start']}, at end {report['loadavg_at_end']}.",
        "",
        f"Corpus: {c['documents']} documents ({c['real_documents']} real stdlib docstring documents), "
        f"{c['chunks']} chunks, mean {c['mean_tokens_per_chunk']} tokens (max {c['max_tokens']}, overlap "
        f"{c['overlap_tokens']}), {c['mean_chunks_per_document']} chunks per document. "
        f"Worker: max_jobs={report['config']['max_jobs']}, per-tenant cap {report['config']['tenant_cap']}, "
        f"poll delays {report['config']['poll_delays']} s (production {report['config']['production_poll_delay']} s), "
        f"uploads as {report['config']['upload']}.",
        "",
        f"**End-to-end / raw: {s['e2e_over_raw']} (goal >= 0.8: {'met' if s['goal_met'] else 'NOT met'}); "
        f"raw {s['raw_chunks_per_s']} chunks/s (spread {s['raw_spread']:.1%}), end-to-end {s['e2e_chunks_per_s']}.**",
        "",
        "Each end-to-end round against the RAW rounds around it, and its decomposition (e2e/raw = embedder "
        "utilisation during e2e x its speed while busy relative to RAW):",
        "",
        md_table(["poll delay s", "e2e chunks/s", "e2e / adjacent RAW", "embedder utilisation", "busy speed vs RAW"],
                 [[e["poll_delay_s"], e["chunks_per_s"], e["over_adjacent_raw"], f"{e['embedder_utilisation']:.1%}",
                   f"{e['busy_speed_vs_raw']:.2f}x"] for e in s["e2e"]]),
        "",
        md_table(["phase", "chunks/s", "wall s", "embedder busy s", "replace_chunks s", "bench CPU s",
                  "Postgres CPU s"], rows),
        "",
        "Stage sums over the documents of each end-to-end round (seconds; jobs overlap, so sums can exceed "
        "the wall time):",
        "",
        md_table(["round", "uploads", "parse", "chunk", "embed", "write (replace_chunks)",
                  "first job start → last write", "stored chunks == raw input"], stage_rows),
    ]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=1500, help="chunks to ingest (whole documents)")
    parser.add_argument("--max-jobs", type=int, default=2, help="concurrent jobs of the arq worker")
    parser.add_argument("--tenant-cap", type=int, default=None,
                        help="ingest_concurrency_per_tenant; default: --max-jobs")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a temporary folder, removed")
    parser.add_argument("--upload", choices=("json", "multipart"), default="json")
    parser.add_argument("--rounds", type=int, default=1, help="END-TO-END, RAW pairs after the first RAW")
    parser.add_argument("--per-document-raw", action="store_true",
                        help="also embed document by document, as the jobs batch")
    parser.add_argument("--poll-delays", default=None,
                        help="arq poll delays to compare, e.g. 0.5,0.05 (one END-TO-END + RAW pair each per round); "
                             f"default: the production worker's (arq's {ARQ_DEFAULT_POLL_DELAY} s unless set)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("arq").setLevel(logging.WARNING)
    if args.data_dir is not None:
        report = asyncio.run(run(args, args.data_dir.resolve()))
    else:
        with tempfile.TemporaryDirectory(prefix="quarry-ingest-bench-") as tmp:
            report = asyncio.run(run(args, Path(tmp)))
    report["report_files"] = write_report("ingest", report, markdown(report))
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
