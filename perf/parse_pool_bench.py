"""What the process hop costs per document: parse + chunk in a thread vs in a ParsePool worker.

    .venv/bin/python perf/parse_pool_bench.py [--docs 200] [--concurrency 1,8] [--workers 0]

The documents are small text files (perf/corpus.py's stdlib docstrings, one per file) written to a temp
dir. THREAD: asyncio.to_thread(parse_file) then asyncio.to_thread(chunk_document), as
rag.ingest.prepare_file does without a pool. POOL: ParsePool.parse_and_chunk (rag.parse_pool),
as the ingestion job does. Both at the ingestion defaults (254 tokens, overlap 32), each at
every --concurrency (documents in flight at once). The pool's start-up (fork server, workers,
tokenizer) is timed apart and not counted per document. Printed as JSON. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perf.corpus import stdlib_docstrings
from rag.chunking import HFTokenizer, chunk_document
from rag.embedders import tokenizer_path
from rag.isolation import default_workers
from rag.parse_pool import ParsePool
from rag.parsing import parse_file

MAX_TOKENS, OVERLAP = 254, 32


async def run_all(paths: list[Path], concurrency: int, one) -> dict[str, float]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def timed(path: Path) -> None:
        async with gate:
            started = time.perf_counter()
            await one(path)
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(timed(p) for p in paths))
    wall = time.perf_counter() - started
    return {"docs_per_s": round(len(paths) / wall, 1), "wall_ms_per_doc": round(wall * 1000 / len(paths), 2),
            "median_latency_ms": round(statistics.median(latencies), 2),
            "p95_latency_ms": round(sorted(latencies)[int(len(latencies) * 0.95) - 1], 2)}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--workers", type=int, default=0, help="pool workers; 0 = one per CPU, at most 8")
    args = parser.parse_args()
    tokenizer = HFTokenizer.from_file(tokenizer_path())
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, doc in enumerate(stdlib_docstrings()[:args.docs]):
            path = Path(tmp) / f"doc{i}.txt"
            path.write_text(doc.text)
            paths.append(path)
        sizes = [p.stat().st_size for p in paths]

        async def in_thread(path: Path) -> None:
            parsed = await asyncio.to_thread(parse_file, path, "txt")
            await asyncio.to_thread(chunk_document, parsed, tokenizer, MAX_TOKENS, OVERLAP)

        workers = args.workers or default_workers(8)
        started = time.perf_counter()
        pool = ParsePool(tokenizer_path(), workers=workers, timeout_s=120, max_memory_mb=2048)
        await pool.start()
        startup_ms = (time.perf_counter() - started) * 1000

        async def in_pool(path: Path) -> None:
            await pool.parse_and_chunk(path, "txt", max_tokens=MAX_TOKENS, overlap_tokens=OVERLAP)

        report: dict[str, object] = {
            "docs": len(paths), "median_bytes": int(statistics.median(sizes)), "pool_workers": workers,
            "pool_startup_ms": round(startup_ms), "runs": {},
        }
        try:
            for concurrency in [int(c) for c in args.concurrency.split(",")]:
                await run_all(paths[:20], concurrency, in_pool)  # warm every worker
                await run_all(paths[:20], concurrency, in_thread)
                thread = await run_all(paths, concurrency, in_thread)
                isolated = await run_all(paths, concurrency, in_pool)
                report["runs"][f"concurrency={concurrency}"] = {  # type: ignore[index]
                    "thread": thread, "pool": isolated,
                    "overhead_ms_per_doc": round(isolated["wall_ms_per_doc"] - thread["wall_ms_per_doc"], 2),
                }
        finally:
            await asyncio.to_thread(pool.close)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
