"""Naive vs tuned serving, and the bare HTTP ceiling, measured in ONE run on this machine.

    .venv/bin/python perf/serving_bench.py [--seconds 15] [--concurrency 32] [--docs 300] [--out DIR]

Starts its own embedded Postgres + Valkey (a temp dir), ingests --docs short documents with the
real embedder, then serves the same search workload (POST /v1/search, 60 distinct queries drawn
with a Zipf-like skew, so popular queries repeat as they do in production) under:

  ceiling  perf/ceiling.py: Granian + Litestar answering a search-sized JSON, nothing else
  naive    1 Granian worker, pool of 1, no caches (principal, result, embedding)
  tuned    2 workers (this machine's cores), pool 10, all caches, rate limiting on (limits high)
  tuned_no_ratelimit   the same without rate limiting (what the limiter's Redis round trip costs)

Each configuration runs --seconds after a short warm-up with --concurrency clients (one asyncio
process, raw HTTP/1.1 keep-alive connections). The load generator shares the 2 cores with the server, so every
figure is only meaningful as a ratio within the run. Prints JSON; writes JSON + Markdown to --out.
Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from storage.embedded import EmbeddedPostgres, EmbeddedValkey, free_port  # noqa: E402

TOPICS = ["lighthouse", "glacier", "volcano", "sourdough", "chess", "tides", "honeybees", "rust", "aurora",
          "penguins", "orchids", "satellites", "coral", "bridges", "typhoons", "vaccines", "comets", "deserts",
          "violins", "railways"]
ASPECTS = ["history", "maintenance", "safety", "costs", "how it works", "common problems"]


def corpus(n: int) -> list[str]:
    rng = random.Random(7)  # noqa: S311 - reproducible text, not secrets
    docs = []
    for i in range(n):
        topic, aspect = TOPICS[i % len(TOPICS)], rng.choice(ASPECTS)
        docs.append(f"Notes {i} on the {aspect} of {topic}: " + " ".join(
            rng.choice([topic, aspect, "team", "report", "season", "north", "survey", "guide", "tool", "record"])
            for _ in range(60)))
    return docs


def queries() -> list[str]:
    return [f"{aspect} of {topic}" for topic in TOPICS for aspect in ASPECTS[:3]]


async def prepare(pg: EmbeddedPostgres, valkey: EmbeddedValkey, docs: int) -> tuple[str, str]:
    """Migrated database, a tenant with an admin key, --docs documents ingested."""
    from api.app import app_database_url
    from core.settings import load_settings
    from jobs.worker import shutdown_resources, startup_resources
    from storage.migrate import ensure_app_role, ensure_database, migrate
    from storage.urls import with_database
    from tests.ingest_helpers import run_jobs

    await ensure_database(pg.url(), "quarry")
    url = with_database(pg.url(), "quarry")
    await migrate(url)
    await ensure_app_role(url, "quarry_app", pg.app_password)
    settings = load_settings(environ={}, dotenv=None, database_url=url, redis_url=valkey.url,
                             app_db_password=pg.app_password,
                             data_dir=str(pg.pgdata.parent / "data"), rate_limit_enabled=False)
    from litestar.testing import AsyncTestClient

    from api.app import create_app
    from storage.db import create_pool
    from storage.repositories import api_keys, tenants
    from storage.tenancy import tenant_tx

    pool = await create_pool(app_database_url(settings))
    owner = await create_pool(url, min_size=1, max_size=1)  # creating tenants is for the owner role
    async with owner.acquire() as conn:
        tenant = await tenants.create_tenant(conn, "bench")
    await owner.close()
    async with tenant_tx(pool, tenant.id) as conn:
        key, _ = await api_keys.create_key(conn, tenant.id, "admin")
    await pool.close()
    headers = {"Authorization": f"Bearer {key}"}
    async with AsyncTestClient(app=create_app(settings)) as client:
        cid = (await client.post("/v1/collections", json={"name": "bench"}, headers=headers)).json()["id"]
        for i, text in enumerate(corpus(docs)):
            r = await client.post(f"/v1/collections/{cid}/documents", json={"text": text, "uri": f"d{i}"},
                                  headers=headers)
            assert r.status_code == 202, r.text
    ctx: dict[str, Any] = {}
    await startup_resources(ctx, settings)
    try:
        await run_jobs(settings, ctx)
    finally:
        await shutdown_resources(ctx)
    return url, key


def serve(name: str, env: dict[str, str], workers: int, target: str,
          log_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = open(log_dir / f"{name}.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "granian"), "--interface", "asgi", "--factory", "--workers", str(workers),
         "--loop", "uvloop", "--host", "127.0.0.1", "--port", str(port), "--no-access-log", target],
        cwd=REPO, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


async def wait_ready(base: str, path: str) -> None:
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(base_url=base) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(path, timeout=2)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.3)
    raise RuntimeError(f"{base} did not become ready")


async def _connection(host: str, port: int, headers: dict[str, str], bodies: list[bytes], weights: list[float],
                      stop_at: float, latencies: list[float], statuses: dict[int, int], rng: random.Random) -> int:
    """One keep-alive HTTP/1.1 connection sending searches back to back (a raw asyncio client:
    httpx would cost more CPU than the server being measured)."""
    reader, writer = await asyncio.open_connection(host, port)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    errors = 0
    try:
        while time.monotonic() < stop_at:
            body = rng.choices(bodies, weights)[0]
            request = (f"POST /v1/search HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                       f"{extra}Content-Length: {len(body)}\r\n\r\n").encode() + body
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1
    except (OSError, asyncio.IncompleteReadError):
        errors += 1
    finally:
        writer.close()
    return errors


async def load(base: str, headers: dict[str, str], seconds: float, concurrency: int) -> dict[str, Any]:
    qs = queries()
    bodies = [json.dumps({"query": q, "k": 10}).encode() for q in qs]
    weights = [1 / (i + 1) for i in range(len(qs))]  # Zipf-like popularity
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    host, port = base.removeprefix("http://").split(":")
    began = time.monotonic()
    errors = sum(await asyncio.gather(*[
        _connection(host, int(port), headers, bodies, weights, began + seconds, latencies, statuses,
                    random.Random(i)) for i in range(concurrency)]))  # noqa: S311
    elapsed = time.monotonic() - began
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2) if latencies else 0.0

    total = len(latencies) + errors
    return {"requests": total, "ok": len(latencies), "rps": round(len(latencies) / elapsed, 1),
            "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99),
            "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else 0.0,
            "error_rate": round(errors / total, 4) if total else 0.0, "statuses": statuses}


async def scrape_hit_rate(base: str) -> float | None:
    async with httpx.AsyncClient(base_url=base) as client:
        text = (await client.get("/metrics")).text
    hits = misses = 0.0
    for line in text.splitlines():
        if line.startswith('quarry_cache_hits_total{cache="search"'):
            hits += float(line.rsplit(" ", 1)[1])
        elif line.startswith('quarry_cache_misses_total{cache="search"'):
            misses += float(line.rsplit(" ", 1)[1])
    return round(hits / (hits + misses), 3) if hits + misses else None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--out", type=Path, default=REPO / "perf" / "reports" / "serving")  # + serving.json/.md
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="quarry-serving-bench-"))
    pg, valkey = EmbeddedPostgres(root / "pg"), EmbeddedValkey(root / "valkey")
    pg.start()
    valkey.start()
    results: dict[str, Any] = {"seconds": args.seconds, "concurrency": args.concurrency, "docs": args.docs,
                               "cores": os.cpu_count()}
    try:
        url, key = await prepare(pg, valkey, args.docs)
        headers = {"Authorization": f"Bearer {key}"}
        common = {"DATABASE_URL": url, "REDIS_URL": valkey.url, "QUARRY_DATA_DIR": str(root / "data"),
                  "QUARRY_APP_DB_PASSWORD": pg.app_password,
                  "QUARRY_LOG_LEVEL": "warning"}
        configs = {
            "ceiling": ({}, 2, "perf.ceiling:app_factory", "/healthz"),
            "naive": ({**common, "QUARRY_API_WORKERS": "1", "QUARRY_DB_POOL_MAX": "1", "QUARRY_DB_POOL_MIN": "1",
                       "QUARRY_SEARCH_CACHE_TTL_S": "0", "QUARRY_EMBEDDING_CACHE_TTL_S": "0",
                       "QUARRY_PRINCIPAL_CACHE_LOCAL_TTL_S": "0", "QUARRY_PRINCIPAL_CACHE_REDIS_TTL_S": "0",
                       "QUARRY_RATE_LIMIT_ENABLED": "false", "QUARRY_DB_ACQUIRE_TIMEOUT_S": "30"},
                      1, "api.app:app_factory", "/readyz"),
            "tuned": ({**common, "QUARRY_API_WORKERS": "2", "QUARRY_DB_POOL_MAX": "10",
                       "QUARRY_RATE_LIMITS": "search=100000000/100000000",
                       "PROMETHEUS_MULTIPROC_DIR": str(_fresh(root / "prom"))},
                      2, "api.app:app_factory", "/readyz"),
            # Attribution: the tuned configuration without the rate limiter's Redis round trip.
            "tuned_no_ratelimit": ({**common, "QUARRY_API_WORKERS": "2", "QUARRY_DB_POOL_MAX": "10",
                                    "QUARRY_RATE_LIMIT_ENABLED": "false",
                                    "PROMETHEUS_MULTIPROC_DIR": str(_fresh(root / "prom2"))},
                                   2, "api.app:app_factory", "/readyz"),
        }
        for name, (env, workers, target, ready) in configs.items():
            proc, base = serve(name, dict(env), workers, target, args.out)
            try:
                await wait_ready(base, ready)
                await load(base, headers, min(3.0, args.seconds / 3), args.concurrency)  # warm-up
                results[name] = await load(base, headers, args.seconds, args.concurrency)
                if name == "tuned":
                    results[name]["search_cache_hit_rate"] = await scrape_hit_rate(base)
            finally:
                stop(proc)
            print(name, json.dumps(results[name]), flush=True)
        ceiling, naive, tuned = results["ceiling"]["rps"], results["naive"]["rps"], results["tuned"]["rps"]
        results["ratios"] = {
            "tuned_vs_naive_rps": round(tuned / naive, 2) if naive else None,
            "tuned_vs_ceiling_rps": round(tuned / ceiling, 3) if ceiling else None,
            "naive_vs_ceiling_rps": round(naive / ceiling, 3) if ceiling else None,
            "tuned_p95_vs_naive_p95": round(results["tuned"]["p95_ms"] / results["naive"]["p95_ms"], 3)
            if results["naive"]["p95_ms"] else None,
        }
    finally:
        valkey.stop()
        pg.stop()
    (args.out / "serving.json").write_text(json.dumps(results, indent=2))
    (args.out / "serving.md").write_text(_markdown(results))
    print(json.dumps(results, indent=2))


def _fresh(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for f in path.glob("*.db"):
        f.unlink()
    return path


def _markdown(r: dict[str, Any]) -> str:
    lines = [f"# Serving: naive vs tuned ({r['seconds']} s, {r['concurrency']} clients, {r['cores']} cores)", "",
             "| config | req/s | p50 ms | p95 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
    for name in ("ceiling", "naive", "tuned", "tuned_no_ratelimit"):
        if name in r:
            x = r[name]
            lines.append(f"| {name} | {x['rps']} | {x['p50_ms']} | {x['p95_ms']} | {x['p99_ms']} | {x['error_rate']} |")
    lines += ["", "Ratios (same run): " + json.dumps(r.get("ratios", {})),
              f"Search cache hit rate (tuned): {r.get('tuned', {}).get('search_cache_hit_rate')}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    asyncio.run(main())
