"""Shared helpers of the perf/ benchmarks: embedded servers, percentiles, reports.

Imported by the benchmark scripts as a sibling module (`python perf/<bench>.py` puts perf/ on
sys.path). Nothing here measures anything by itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.settings import Settings, load_settings
from ops.bootstrap import embedded_database, prepare_database
from storage.embedded import EmbeddedPostgres, EmbeddedValkey

__all__ = ["REPO", "REPORTS", "Servers", "cpu_seconds", "log", "machine", "md_table", "percentiles", "running_servers",
           "server_version", "write_report"]

REPO = Path(__file__).resolve().parent.parent
REPORTS = REPO / "perf" / "reports"
_STARTED = time.monotonic()


def log(message: str) -> None:
    """Progress goes to stderr, so stdout stays one JSON document."""
    print(f"[{time.monotonic() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/mean in ms of samples in seconds (nearest-rank, as perf/embedder_bench.py)."""
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

    return {"n": len(ordered), "p50_ms": pick(0.50), "p95_ms": pick(0.95), "p99_ms": pick(0.99),
            "mean_ms": round(statistics.fmean(ordered) * 1000, 2), "max_ms": round(ordered[-1] * 1000, 2)}


def git_state() -> str:
    """The commit benchmarked, '+dirty' when the working tree has uncommitted changes."""
    import subprocess

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    import onnxruntime

    return {"git": git_state(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "onnxruntime": onnxruntime.__version__,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def cpu_seconds() -> float:
    """CPU time of this process (user + system), children excluded."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Servers:
    postgres: EmbeddedPostgres
    valkey: EmbeddedValkey
    admin_url: str
    settings: Settings


@asynccontextmanager
async def running_servers(data_dir: Path, **settings: Any) -> AsyncIterator[Servers]:
    """Embedded Postgres + Valkey under `data_dir` (kept between runs), migrated, with Settings
    built like the tests build them (no environment, no .env)."""
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    pg = EmbeddedPostgres(data_dir / "postgres")
    valkey = EmbeddedValkey(data_dir / "valkey")
    await asyncio.to_thread(pg.start)
    try:
        await asyncio.to_thread(valkey.start)
        try:
            admin_url = await embedded_database(pg)
            config = load_settings(environ={}, dotenv=None, database_url=admin_url, redis_url=valkey.url,
                                   app_db_password=pg.app_password, data_dir=str(data_dir), **settings)
            await prepare_database(config, admin_url)
            yield Servers(pg, valkey, admin_url, config)
        finally:
            await asyncio.to_thread(valkey.stop)
    finally:
        await asyncio.to_thread(pg.stop)


async def server_version(admin_url: str) -> dict[str, str]:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        return {
            "postgres": str(await conn.fetchval("SHOW server_version")),
            "pgvector": str(await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")),
            "shared_buffers": str(await conn.fetchval("SHOW shared_buffers")),
        }
    finally:
        await conn.close()


def write_report(kind: str, report: dict[str, Any], markdown: str) -> dict[str, str]:
    """perf/reports/<kind>-<UTC timestamp>.json and .md (the folder is git-ignored)."""
    REPORTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    json_path = REPORTS / f"{kind}-{stamp}.json"
    md_path = REPORTS / f"{kind}-{stamp}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(markdown)
    return {"json": str(json_path.relative_to(REPO)), "markdown": str(md_path.relative_to(REPO))}


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
