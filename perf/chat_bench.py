"""Chat time-to-first-token benchmark: the platform's overhead on TTFT under concurrent streams.

    .venv/bin/python perf/chat_bench.py --concurrency 50 200 --duration 30 [--scenario direct|search]

Starts everything itself on 127.0.0.1 (nothing is left running): an embedded Postgres and
Valkey in a temporary folder, the simulated LLM (`perf/simllm.py --echo`), and the API under
Granian (`QUARRY_API_WORKERS` workers, the OpenAI-compatible provider pointed at the simulator).
Then, for each concurrency N, two phases of `--duration` seconds with N closed-loop streaming
clients spread over `--client-procs` processes:

1. reference: the clients stream straight from the simulator (same shape of request), which
   measures the simulator's and the clients' own lag on this machine in this run;
2. quarry: the clients stream `POST /v1/chat` (`stream: true`) from the API.

TTFT is request sent -> first `token` event. Overhead = TTFT - the simulated LLM's own time to
its first answer token: `--ttft-ms` in the `direct` scenario (the LLM answers at once); in the
`search` scenario (the LLM first calls `search`, the agent embeds the query and runs the hybrid
search, then calls the LLM again) 2 x `--ttft-ms` plus the time the simulator spends streaming
the tool call. Every answer carries the stream's own nonce (`--echo`), so a stream that received
another's tokens (interleaved) or ended without `done` (dropped) is counted.

Prints a JSON report and a Markdown table; `--out DIR` also writes them there. Not a test:
nothing asserts a time (see DESIGN "Performance method").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
QUESTION = "where do penguins live and what do they eat?"
CORPUS = [
    ("Penguins", "Penguins live in the Southern Hemisphere, mostly along the coasts of Antarctica. "
                 "Penguins eat krill, squid and small fish that they catch underwater."),
    ("Glaciers", "Glaciers carve U-shaped valleys as they slowly advance downhill. Moraines are ridges of "
                 "rock debris left behind by a retreating glacier."),
    ("Sourdough", "Sourdough bread needs a starter fed with flour and water. Let the dough proof overnight."),
]


def log(message: str) -> None:
    print(f"[chat-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the load clients (run as `chat_bench.py _client ...` subprocesses) ----------------------


async def _quarry_chat(http: Any, url: str, key: str, nonce: str, expected_tokens: int) -> dict[str, Any]:
    """One streamed chat. Cheap on the client's CPU (substring checks, JSON only for `done`):
    the load generator shares the machine with what it measures."""
    question = f"{nonce} {QUESTION}"
    record: dict[str, Any] = {"ok": False, "ttft": None, "error": None, "interleaved": False, "question": question}
    tokens = 0
    started = time.perf_counter()
    event = b""
    try:
        async with http.post(f"{url}/v1/chat", json={"message": question, "stream": True},
                             headers={"Authorization": f"Bearer {key}"}) as response:
            record["status"] = response.status
            if response.status != 200:
                await response.read()
                record["error"] = f"HTTP {response.status}"
                return record
            async for line in response.content:
                if line.startswith(b"event:"):
                    event = line[6:].strip()
                elif not line.startswith(b"data:"):
                    continue
                elif event == b"token":
                    if record["ttft"] is None:
                        record["ttft"] = time.perf_counter() - started
                    # One event may carry several tokens (those the platform read together).
                    count = line.count(b"%s:" % nonce.encode())
                    tokens += count
                    if not count:
                        record["interleaved"] = True  # a token of another stream
                elif event == b"error":
                    record["error"] = json.loads(line[5:])["code"]
                elif event == b"done":
                    answer = json.loads(line[5:])["answer"]
                    expected = " ".join(f"{nonce}:{i}" for i in range(expected_tokens))
                    record["interleaved"] |= answer != expected or tokens != expected_tokens
                    record["ok"] = True
    except Exception as exc:  # a dropped connection is a result here, not a crash
        record["error"] = type(exc).__name__
    record["total"] = time.perf_counter() - started
    if not record["ok"] and record["error"] is None:
        record["error"] = "dropped (no done event)"
    return record


async def _sim_chat(http: Any, url: str, nonce: str, expected_tokens: int) -> dict[str, Any]:
    """The same request shape straight to the simulator, parsed as cheaply."""
    question = f"{nonce} {QUESTION}"
    record: dict[str, Any] = {"ok": False, "ttft": None, "error": None, "interleaved": False, "question": question}
    mine = f'"{nonce}:'.encode()
    tokens = 0
    started = time.perf_counter()
    body = {"model": "sim-llm", "stream": True, "messages": [{"role": "user", "content": question}]}
    try:
        async with http.post(f"{url}/chat/completions", json=body) as response:
            record["status"] = response.status
            async for line in response.content:
                if not line.startswith(b"data:"):
                    continue
                if line.startswith(b"data: [DONE]"):
                    record["interleaved"] |= tokens != expected_tokens
                    record["ok"] = True
                    await response.read()  # to the end of the body: the connection is reused
                    break
                if b'"content": "' in line and b'"content": ""' not in line:
                    if record["ttft"] is None:
                        record["ttft"] = time.perf_counter() - started
                    tokens += 1
                    if mine not in line:
                        record["interleaved"] = True
    except Exception as exc:
        record["error"] = type(exc).__name__
    record["total"] = time.perf_counter() - started
    if not record["ok"] and record["error"] is None:
        record["error"] = "dropped (no [DONE])"
    return record


async def _client(args: argparse.Namespace) -> list[dict[str, Any]]:
    """`--users` closed-loop users, each with its own keep-alive connection, as separate people
    are. aiohttp, not httpx: the load generator shares the machine with what it measures, and
    reads a token for about a third of httpx's CPU. (One shared httpx pool of hundreds of
    connections also made this client the bottleneck: httpcore scans every pooled connection
    on each request and release, and when a wave of streams ended together new requests waited
    seconds in the client before they were sent.)"""
    import aiohttp

    async def user(index: int) -> list[dict[str, Any]]:
        out, n = [], 0
        timeout = aiohttp.ClientTimeout(total=120, connect=30)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), timeout=timeout) as http:
            # --ramp: user g of N starts g/N of the ramp late (users arrive spread out, as in a
            # ramped load test); without it every user's first chat starts at the same instant.
            offset = args.ramp * (index * args.procs + args.proc) / max(1, args.total_users)
            await asyncio.sleep(max(0.0, args.start_at + offset - time.time()))
            while time.time() < deadline:
                nonce = f"p{args.proc}u{index}n{n}"
                n += 1
                if args.target == "quarry":
                    record = await _quarry_chat(http, args.url, args.key, nonce, args.tokens)
                else:
                    record = await _sim_chat(http, args.url, nonce, args.tokens)
                record["sent_at"] = time.time()
                out.append(record)
        return out

    deadline = args.start_at + args.duration
    per_user = await asyncio.gather(*(user(i) for i in range(args.users)))
    return [r for records in per_user for r in records]


def client_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--target", choices=["quarry", "sim"], required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--key", default="")
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--start-at", type=float, required=True)
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--proc", type=int, default=0)
    p.add_argument("--procs", type=int, default=1)
    p.add_argument("--total-users", type=int, default=0)
    p.add_argument("--ramp", type=float, default=0.0)
    args = p.parse_args(argv)
    try:
        import uvloop

        records = uvloop.run(_client(args))
    except ImportError:
        records = asyncio.run(_client(args))
    json.dump(records, sys.stdout)


def run_load(target: str, url: str, key: str, users: int, procs: int, duration: float,
             tokens: int, ramp: float = 0.0) -> tuple[list[dict[str, Any]], float]:
    """N closed-loop users over `procs` client processes, starting together or spread over
    `ramp` seconds; returns (records, wall seconds)."""
    start_at = time.time() + 2.0  # every process ready before the clock starts
    shares = [users // procs + (1 if i < users % procs else 0) for i in range(procs)]
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "_client", "--target", target, "--url", url, "--key", key,
             "--users", str(n), "--duration", str(duration), "--start-at", str(start_at), "--tokens", str(tokens),
             "--proc", str(i), "--procs", str(procs), "--total-users", str(users), "--ramp", str(ramp)],
            stdout=subprocess.PIPE, cwd=REPO)
        for i, n in enumerate(shares) if n
    ]
    records: list[dict[str, Any]] = []
    for child in children:
        out, _ = child.communicate(timeout=duration + 300)
        records += json.loads(out or b"[]")
    return records, time.time() - start_at


async def _disconnect_check(api: str, sim: str, key: str, n: int) -> dict[str, Any]:
    """`n` streams hung up right after their first token: does the simulated LLM see each of
    its requests cancelled (the platform closed them at once), and does the API stay healthy?"""
    import httpx

    stats_url = sim.removesuffix("/v1") + "/sim/stats"
    async with httpx.AsyncClient(timeout=60) as http:
        before = (await http.get(stats_url)).json()

        async def hang_up(i: int) -> None:
            body = {"message": f"bye{i} {QUESTION}", "stream": True}
            async with http.stream("POST", f"{api}/v1/chat", json=body,
                                   headers={"Authorization": f"Bearer {key}"}) as response:
                async for line in response.aiter_lines():
                    if line.startswith("event: token"):
                        return  # leaving the block closes the connection mid-stream

        await asyncio.gather(*(hang_up(i) for i in range(n)))
        cancelled = 0
        for _ in range(50):
            await asyncio.sleep(0.1)
            stats = (await http.get(stats_url)).json()
            cancelled = stats["cancelled"] - before["cancelled"]
            if cancelled >= n:
                break
        healthy = (await http.get(f"{api}/readyz")).status_code == 200
    return {"hung_up": n, "llm_requests_cancelled": cancelled, "api_ready_after": healthy}


# --- the platform ----------------------------------------------------------------------------


def _spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its children so far."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


def _profile_workers(pid: int, out: Path, label: str, duration: float) -> list[subprocess.Popen[bytes]]:
    """py-spy on every API worker for most of a phase (py-spy must be installed: pip install py-spy)."""
    import psutil

    out.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen([str(BIN / "py-spy"), "record", "-p", str(child.pid), "-d", str(max(1, int(duration) - 2)),
                              "-r", "200", "-f", "raw", "-o", str(out / f"{label}-{child.pid}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for child in psutil.Process(pid).children()]


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback only
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


async def _database(admin_url: str, app_password: str) -> tuple[str, str]:
    """Migrate, create the app role, a tenant and its admin key; returns (owner URL, key)."""
    from storage.db import create_pool
    from storage.migrate import ensure_app_role, ensure_database, migrate
    from storage.repositories import api_keys, tenants
    from storage.tenancy import tenant_tx
    from storage.urls import with_credentials, with_database

    await ensure_database(admin_url, "quarry_bench")
    url = with_database(admin_url, "quarry_bench")
    await migrate(url)
    await ensure_app_role(url, "quarry_app", app_password)
    pool = await create_pool(with_credentials(url, "quarry_app", app_password), min_size=1, max_size=2)
    owner = await create_pool(url, min_size=1, max_size=1)  # creating tenants is for the owner role
    try:
        async with owner.acquire() as conn:
            tenant = await tenants.create_tenant(conn, f"bench-{uuid.uuid4().hex[:8]}")
        async with tenant_tx(pool, tenant.id) as conn:
            key, _ = await api_keys.create_key(conn, tenant.id, "admin")
    finally:
        await owner.close()
        await pool.close()
    return url, key


async def _seed(api: str, key: str, env: dict[str, str]) -> None:
    """A small corpus through the API, ingested by an in-process burst arq worker."""
    import httpx
    from arq.connections import RedisSettings
    from arq.worker import Worker

    from core.settings import load_settings
    from jobs.worker import FUNCTIONS, shutdown_resources, startup_resources

    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=api, headers=headers, timeout=60) as http:
        r = await http.post("/v1/collections", json={"name": "bench"})
        r.raise_for_status()
        cid = r.json()["id"]
        for title, text in CORPUS:
            r = await http.post(f"/v1/collections/{cid}/documents", json={"text": text, "title": title})
            r.raise_for_status()
    settings = load_settings(environ=env, dotenv=None)
    ctx: dict[str, Any] = {}
    await startup_resources(ctx, settings)
    worker = Worker(functions=FUNCTIONS, redis_settings=RedisSettings.from_dsn(env["REDIS_URL"]), burst=True,
                    ctx=ctx, handle_signals=False, poll_delay=0.05)
    try:
        await worker.main()
    finally:
        await worker.close()
        await shutdown_resources(ctx)


# --- numbers ---------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)], 1)


def _expected_ttft_ms(args: argparse.Namespace, question: str) -> float:
    if args.scenario == "direct":
        return float(args.ttft_ms)
    # simllm streams the tool call's arguments in about three fragments, one per token slot.
    arguments = json.dumps({"query": question[:500]})
    third = max(1, len(arguments) // 3)
    fragments = math.ceil(len(arguments) / third)
    return float(2 * args.ttft_ms + (fragments - 1) * 1000 / args.tokens_per_s)


def summarise(records: list[dict[str, Any]], wall_s: float, expected: Any) -> dict[str, Any]:
    ok = [r for r in records if r["ok"]]
    ttft = [r["ttft"] * 1000 for r in ok if r["ttft"] is not None]
    overhead = [r["ttft"] * 1000 - expected(r["question"]) for r in ok if r["ttft"] is not None]
    steady = [r["ttft"] * 1000 - expected(r["question"]) for r in ok
              if r["ttft"] is not None and not r["question"].split(" ", 1)[0].endswith("n0")]
    errors: dict[str, int] = {}
    for r in records:
        if not r["ok"]:
            errors[str(r["error"])] = errors.get(str(r["error"]), 0) + 1
    return {
        "streams": len(records), "completed": len(ok), "chats_per_s": round(len(ok) / wall_s, 1),
        "dropped": len(records) - len(ok), "interleaved": sum(1 for r in ok if r["interleaved"]), "errors": errors,
        "ttft_ms": {"p50": _pct(ttft, 0.5), "p95": _pct(ttft, 0.95), "p99": _pct(ttft, 0.99)},
        "overhead_ms": {"p50": _pct(overhead, 0.5), "p95": _pct(overhead, 0.95), "p99": _pct(overhead, 0.99),
                        "mean": round(statistics.fmean(overhead), 1) if overhead else None},
        # Without --ramp every user's first chat starts at the same instant (a burst of N chat
        # setups at once); the chats after it arrive more spread out.
        "overhead_after_first_ms": {"p50": _pct(steady, 0.5), "p95": _pct(steady, 0.95), "p99": _pct(steady, 0.99)},
        "total_ms": {"p50": _pct([r["total"] * 1000 for r in ok], 0.5),
                     "p95": _pct([r["total"] * 1000 for r in ok], 0.95)},
    }


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [
        f"# Chat TTFT overhead ({cfg['scenario']} scenario)", "",
        f"{report['machine']['cpus']} CPUs, {cfg['api_workers']} Granian workers, simulated LLM TTFT "
        f"{cfg['ttft_ms']} ms at {cfg['tokens_per_s']} tokens/s, {cfg['tokens']} tokens per answer, "
        f"{cfg['duration_s']} s per phase, {cfg['client_procs']} client processes, "
        + (f"users' first chats spread over {cfg['ramp_s']} s." if cfg.get("ramp_s")
           else "every user's first chat at the same instant."), "",
        "| concurrent streams | target | chats/s | TTFT p50 | TTFT p95 | overhead p50 | overhead p95 | "
        "overhead p99 | overhead p95 after first chat | dropped | interleaved | errors | API CPU ms/chat | "
        "machine CPU busy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        for target in ("reference", "floor", "quarry"):
            s = run.get(target)
            if s is None:
                continue
            lines.append(
                f"| {run['concurrency']} | {target} | {s['chats_per_s']} | {s['ttft_ms']['p50']} | "
                f"{s['ttft_ms']['p95']} | {s['overhead_ms']['p50']} | {s['overhead_ms']['p95']} | "
                f"{s['overhead_ms']['p99']} | {s['overhead_after_first_ms']['p95']} | {s['dropped']} | "
                f"{s['interleaved']} | {s['errors'] or ''} | "
                f"{s.get('api_cpu_ms_per_chat', '')} | {s.get('machine_cpu_busy_pct', '')}% |")
    lines += ["", "Times in ms. `reference` streams straight from the simulator (its own lag and the clients');",
              "`floor` is a bare ASGI app under the same Granian options sending the same events from a timer",
              "(perf/sse_floor.py: what any Python app streaming this much costs here);",
              "`quarry` streams `POST /v1/chat` through the platform. Overhead = TTFT - the simulated LLM's TTFT."]
    if report.get("disconnect_check"):
        d = report["disconnect_check"]
        lines += ["", f"Disconnects: {d['hung_up']} streams hung up after their first token; the simulated LLM saw "
                      f"{d['llm_requests_cancelled']} of its requests cancelled; API ready afterwards: "
                      f"{d['api_ready_after']}."]
    return "\n".join(lines)


# --- main --------------------------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_client":
        client_main(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", type=int, nargs="+", default=[50, 200])
    p.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    p.add_argument("--scenario", choices=["direct", "search"], default="direct")
    p.add_argument("--ttft-ms", type=float, default=300.0)
    p.add_argument("--tokens-per-s", type=float, default=50.0)
    p.add_argument("--tokens", type=int, default=20)
    p.add_argument("--api-workers", type=int, default=os.cpu_count() or 2)
    p.add_argument("--client-procs", type=int, default=2)
    p.add_argument("--pool-max", type=int, default=20, help="QUARRY_DB_POOL_MAX per API worker")
    p.add_argument("--ramp", type=float, default=0.0, metavar="S",
                   help="spread the users' first chats over S seconds (default: all start at the same instant)")
    p.add_argument("--disconnects", type=int, default=20, help="streams to hang up on after the first token")
    p.add_argument("--out", type=Path, help="also write chat-bench-<time>.json/.md here")
    p.add_argument("--records", type=Path, metavar="DIR", help="write every chat's record (JSON) per phase to DIR")
    p.add_argument("--py-spy", type=Path, metavar="DIR",
                   help="record each API worker with py-spy during the quarry phases (collapsed stacks in DIR)")
    args = p.parse_args()

    import psutil

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chat-bench-")))
        sys.path.insert(0, str(REPO))
        from storage.embedded import EmbeddedPostgres, EmbeddedValkey, free_port

        pg, valkey = EmbeddedPostgres(tmp / "pg"), EmbeddedValkey(tmp / "valkey")
        log("starting embedded Postgres and Valkey")
        pg.start()
        stack.callback(pg.stop)
        valkey.start()
        stack.callback(valkey.stop)
        admin_url, key = asyncio.run(_database(pg.url(), pg.app_password))

        sim_port, api_port = free_port(), free_port()
        sim_url = f"http://127.0.0.1:{sim_port}/v1"
        sim = _spawn([sys.executable, "-m", "perf.simllm", "--port", str(sim_port), "--ttft-ms", str(args.ttft_ms),
                      "--tokens-per-s", str(args.tokens_per_s), "--tokens", str(args.tokens), "--echo",
                      *(["--tool-first"] if args.scenario == "search" else [])], dict(os.environ), tmp / "sim.log")
        stack.callback(_stop, sim)
        env = {**os.environ, "DATABASE_URL": admin_url, "REDIS_URL": valkey.url, "QUARRY_DATA_DIR": str(tmp / "data"),
               "QUARRY_APP_DB_PASSWORD": pg.app_password,
               "QUARRY_LLM_PROVIDER": "openai", "QUARRY_LLM_BASE_URL": sim_url, "QUARRY_LLM_MODEL": "sim-llm",
               "QUARRY_CHAT_MAX_STREAMS_PER_TENANT": "100000", "QUARRY_DB_POOL_MAX": str(args.pool_max),
               "QUARRY_LOG_LEVEL": "warning",
               # This measures the chat path, not the request-rate limiter (that one has its own bench).
               "QUARRY_RATE_LIMIT_ENABLED": "false"}
        api = _spawn([str(BIN / "granian"), "--interface", "asgi", "--factory", "--host", "127.0.0.1",
                      "--port", str(api_port), "--workers", str(args.api_workers), "--loop", "uvloop",
                      "--backlog", "2048", "--no-access-log", "api.app:app_factory"], env, tmp / "api.log")
        stack.callback(_stop, api)
        api_url = f"http://127.0.0.1:{api_port}"
        floor_url = None
        if args.scenario == "direct":  # the same SSE from a bare ASGI app under the same Granian options
            floor_port = free_port()
            floor = _spawn([str(BIN / "granian"), "--interface", "asgi", "--host", "127.0.0.1", "--port",
                            str(floor_port), "--workers", str(args.api_workers), "--loop", "uvloop", "--backlog",
                            "2048", "--no-access-log", "perf.sse_floor:app"],
                           {**os.environ, "QUARRY_FLOOR_TTFT_MS": str(args.ttft_ms),
                            "QUARRY_FLOOR_TOKENS_PER_S": str(args.tokens_per_s),
                            "QUARRY_FLOOR_TOKENS": str(args.tokens)}, tmp / "floor.log")
            stack.callback(_stop, floor)
            floor_url = f"http://127.0.0.1:{floor_port}"
            _wait_http(f"{floor_url}/readyz", floor)
        _wait_http(f"{sim_url}/models", sim)
        _wait_http(f"{api_url}/readyz", api)
        log(f"API {api_url} ({args.api_workers} workers), simulated LLM {sim_url}")
        if args.scenario == "search":
            log("seeding a small corpus")
            asyncio.run(_seed(api_url, key, env))
        log("warming up")
        run_load("quarry", api_url, key, 4 * args.api_workers, 1, 5.0, args.tokens)

        def expected(question: str) -> float:
            return _expected_ttft_ms(args, question)

        runs = []
        for concurrency in args.concurrency:
            log(f"{concurrency} concurrent streams: reference (straight to the simulator)")
            psutil.cpu_percent()
            ref, ref_wall = run_load("sim", sim_url, "", concurrency, args.client_procs, args.duration, args.tokens,
                                     args.ramp)
            ref_busy = psutil.cpu_percent()
            floor_summary = None
            if floor_url is not None:
                log(f"{concurrency} concurrent streams: floor (a bare ASGI app under Granian, same events)")
                floor_records, floor_wall = run_load("quarry", floor_url, "", concurrency, args.client_procs,
                                                     args.duration, args.tokens, args.ramp)
                floor_summary = summarise(floor_records, floor_wall, lambda _q: float(args.ttft_ms))
                floor_summary["machine_cpu_busy_pct"] = psutil.cpu_percent()
            log(f"{concurrency} concurrent streams: quarry")
            load = os.getloadavg()[0]
            api_cpu, sim_cpu = _cpu_seconds(api.pid), _cpu_seconds(sim.pid)
            psutil.cpu_percent()
            spies = _profile_workers(api.pid, args.py_spy, f"c{concurrency}", args.duration) if args.py_spy else []
            quarry, wall = run_load("quarry", api_url, key, concurrency, args.client_procs, args.duration,
                                    args.tokens, args.ramp)
            busy = psutil.cpu_percent()
            for spy in spies:
                spy.wait()
            if args.records:
                args.records.mkdir(parents=True, exist_ok=True)
                (args.records / f"c{concurrency}-reference.json").write_text(json.dumps(ref))
                (args.records / f"c{concurrency}-quarry.json").write_text(json.dumps(quarry))
            api_cpu, sim_cpu = _cpu_seconds(api.pid) - api_cpu, _cpu_seconds(sim.pid) - sim_cpu
            summary = summarise(quarry, wall, expected)
            chats = max(summary["completed"], 1)
            summary["api_cpu_ms_per_chat"] = round(api_cpu * 1000 / chats, 2)
            summary["api_cpu_cores_busy"] = round(api_cpu / wall, 2)
            summary["sim_cpu_cores_busy"] = round(sim_cpu / wall, 2)
            summary["machine_cpu_busy_pct"] = busy
            reference = summarise(ref, ref_wall, lambda _q: float(args.ttft_ms))
            reference["machine_cpu_busy_pct"] = ref_busy
            runs.append({"concurrency": concurrency, "reference": reference, "floor": floor_summary, "quarry": summary,
                         "loadavg_1m_before": round(load, 2)})
            log(json.dumps(runs[-1]["quarry"]))

        disconnects = asyncio.run(_disconnect_check(api_url, sim_url, key, args.disconnects)) \
            if args.disconnects else None
        report = {
            "config": {"scenario": args.scenario, "ttft_ms": args.ttft_ms, "tokens_per_s": args.tokens_per_s,
                       "tokens": args.tokens, "duration_s": args.duration, "api_workers": args.api_workers,
                       "client_procs": args.client_procs, "db_pool_max": args.pool_max, "ramp_s": args.ramp},
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "runs": runs,
            "disconnect_check": disconnects,
        }
        text = markdown(report)
        print(json.dumps(report, indent=2))
        print(text)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            (args.out / f"chat-bench-{args.scenario}-{stamp}.json").write_text(json.dumps(report, indent=2))
            (args.out / f"chat-bench-{args.scenario}-{stamp}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
