"""`quarry perf PROFILE`: load, stress and endurance runs against the platform on this machine.

    quarry perf smoke                              # 20 s, a few users (what CI runs)
    quarry perf load-200 --data-dir .data/perf     # reuse a seeded corpus between runs
    quarry perf stress --chunks 5000
    quarry perf endurance --duration 3600
    quarry perf load-200 --rev HEAD~3 --rev HEAD   # two git revisions, interleaved, ratios B/A
    quarry perf load-200 --corpus-from .data/perf-search   # the search benchmark's 50k-chunk corpus
    make perf PROFILE=load-100 ARGS="--duration 60"

One command does it all: starts the simulated LLM (perf/simllm.py) and `quarry up` on the
embedded default (Dagster off) in a temporary or given data dir, seeds the corpus through the
API, creates API keys for the simulated users, warms up, runs the profile with Locust headless
while sampling CPU/RSS of every platform process, Postgres connections and Redis memory, scrapes
/metrics, then runs the comparisons — the same search workload against the platform, a second
API server with other settings (default QUARRY_API_WORKERS=1) and the bare Granian+Litestar
ceiling (perf/ceiling.py), interleaved — stops everything and writes the report (JSON,
Markdown, PNG plots) under perf/reports/suite/. See docs/perf-suite.md.

Exit code 0 when the run worked, whatever the numbers (no thresholds); 1 when it did not
(the platform did not start, Locust failed, or no request succeeded).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform as pyplatform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from core.settings import Settings, load_settings
from perf.suite.platform import REPO, Platform, Server, create_perf_keys, log
from perf.suite.profiles import PROFILES, Profile, get_profile
from perf.suite.revisions import copy_database
from perf.suite.runner import Phase, run_phase
from perf.suite.sampler import ResourceSampler, postgres_probe, redis_probe, scrape
from perf.suite.seed import BENCH_TENANT, Corpus, build_queries, chat_questions, existing_corpus, seed_corpus
from perf.suite.stats import SLO
from perf.suite.workload import LoadConfig, ZipfPicker, parse_weights, read_records

__all__ = ["main", "parser"]

PERF_TENANT = "perf"
REPORTS = REPO / "perf" / "reports" / "suite"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quarry perf", description="Load, stress and endurance runs (docs/perf-suite.md)")
    p.add_argument("profile", choices=sorted(PROFILES), help="what to run")
    p.add_argument("--data-dir", type=Path, help="platform data dir, kept and reused (default: a temporary one)")
    p.add_argument("--out", type=Path, help="report folder (default: perf/reports/suite/<profile>-<time>)")
    p.add_argument("--chunks", type=int, help="corpus size in chunks (seeded through the API)")
    p.add_argument("--users", type=int, help="users (load/endurance: the steady count)")
    p.add_argument("--duration", type=float, help="seconds of steady load (load/endurance), per step (stress)")
    p.add_argument("--steps", help="stress steps as USERS:SECONDS,...")
    p.add_argument("--think", help="think time between a user's requests, MIN,MAX seconds")
    p.add_argument("--spawn-rate", type=float, help="users started per second")
    p.add_argument("--warmup", type=float, help="seconds at the start left out of the judged window")
    p.add_argument("--scenario", choices=["mixed", "search", "chat", "upload"], help="the locustfile")
    p.add_argument("--weights", help="mixed workload weights, e.g. search=85,chat=5,upload=1,browse=9")
    p.add_argument("--queries", type=int, default=1000, help="distinct queries in the Zipf mix")
    p.add_argument("--zipf-s", type=float, default=1.0, help="Zipf exponent of the query mix")
    p.add_argument("--keys", type=int, help="API keys shared round-robin by the users")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", default="naive",
                   help="settings of the second configuration, KEY=VALUE[,KEY=VALUE]; `naive` (default) = "
                        "1 API worker, search and embedding caches off, a pool of 1 connection")
    p.add_argument("--no-compare", action="store_true", help="skip the interleaved comparisons and the ceiling")
    p.add_argument("--with-compare", action="store_true", help="run the comparisons even where the profile skips them")
    p.add_argument("--compare-s", type=float, help="seconds of each comparison segment")
    p.add_argument("--compare-rounds", type=int, help="rounds of (platform, second configuration, ceiling)")
    p.add_argument("--compare-users", type=int, help="closed-loop users (no think time) in comparisons")
    p.add_argument("--platform-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra settings for the platform (repeatable)")
    p.add_argument("--llm-ttft-ms", type=float, default=300.0, help="simulated LLM time to first token")
    p.add_argument("--llm-tokens-per-s", type=float, default=50.0, help="simulated LLM token rate")
    p.add_argument("--llm-tokens", type=int, default=40, help="tokens per simulated answer")
    p.add_argument("--keep-data", action="store_true", help="keep the temporary data dir")
    p.add_argument("--corpus-from", type=Path, metavar="DIR",
                   help="a data dir without a database starts from a copy of DIR's: perf/search_bench.py's "
                        "prepared 50,000-chunk corpus (tenant perf-search-a, used as it is), or another suite "
                        "data dir (tenant perf, topped up to --chunks)")
    rev = p.add_argument_group("revisions", "the profile's workload against two git revisions, interleaved "
                               "(docs/perf-suite.md)")
    rev.add_argument("--rev", action="append", default=[], metavar="REV",
                     help="a git revision (twice: the first is the baseline A); `.` = this checkout as it is")
    rev.add_argument("--rev-repo", type=Path, help="the git repository the revisions come from (default: this one)")
    rev.add_argument("--rounds", type=int, help="revision comparisons: rounds of (A, B) segments (default 2)")
    rev.add_argument("--allow-dependency-drift", action="store_true",
                     help="run a revision whose dependencies this virtualenv does not satisfy")
    return p


def _pairs(text: str) -> dict[str, str]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise SystemExit(f"quarry perf: expected KEY=VALUE, got {part!r}")
        out[key.strip()] = value.strip()
    return out


def _profile(args: argparse.Namespace) -> Profile:
    base = PROFILES[args.profile]
    steps = base.steps
    if args.steps:
        steps = [(int(u), float(d)) for u, d in (s.split(":") for s in args.steps.split(","))]
    elif args.users or args.duration:
        if base.stress:
            steps = [(u, args.duration or d) for u, d in steps]
        else:
            steps = [(args.users or base.users, args.duration or base.duration_s)]
    think = tuple(float(x) for x in args.think.split(",")) if args.think else None
    return get_profile(
        args.profile, steps=steps, think_s=think, spawn_rate=args.spawn_rate, warmup_s=args.warmup, chunks=args.chunks,
        weights=parse_weights(args.weights) if args.weights else None, scenario=args.scenario, keys=args.keys,
        compare=False if args.no_compare else (True if args.with_compare else None), compare_s=args.compare_s,
        compare_rounds=args.compare_rounds, compare_users=args.compare_users,
    )


def _machine() -> dict[str, Any]:
    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"cpus": os.cpu_count(), "python": pyplatform.python_version(), "platform": pyplatform.platform(),
            "git": git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else ""),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def _has_tenant(admin_url: str, name: str) -> bool:
    async def query() -> bool:
        conn = await asyncpg.connect(admin_url)
        try:
            return await conn.fetchval("SELECT 1 FROM tenants WHERE name = $1", name) is not None
        finally:
            await conn.close()

    return asyncio.run(query())


def _chat_available(url: str) -> tuple[bool, str]:
    try:
        spec = httpx.get(f"{url}/docs/openapi.json", timeout=30).json()
    except (httpx.HTTPError, ValueError) as exc:
        return False, f"could not read the OpenAPI document: {exc}"
    if "/v1/chat" not in spec.get("paths", {}):
        return False, "the API has no POST /v1/chat yet"
    return True, "POST /v1/chat with the simulated OpenAI-compatible LLM"


def _warm_up(url: str, key: str, queries: list[str], collections: list[str], chat: bool) -> None:
    """Load the embedder in every API worker and open pools before anything is measured."""
    headers = {"Authorization": f"Bearer {key}"}

    def one(i: int) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
            for j in range(4):
                client.post("/v1/search", json={"query": queries[(i * 4 + j) % len(queries)], "k": 10,
                                                "collections": collections})
            if chat and i < 2:
                client.post("/v1/chat", json={"message": queries[i], "stream": False, "collections": collections})

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, range(8)))


def _sample_payload(url: str, key: str, query: str, collections: list[str], out: Path) -> Path:
    response = httpx.post(f"{url}/v1/search", json={"query": query, "k": 10, "collections": collections},
                          headers={"Authorization": f"Bearer {key}"}, timeout=60)
    response.raise_for_status()
    out.write_bytes(response.content)
    return out


def _settings_overrides(settings_fields: set[str], sim_url: str | None) -> dict[str, str]:
    """Settings a perf run needs: the simulated LLM and chat caps high enough not to reject the
    load (the targets measure the platform, not its admission limits)."""
    env: dict[str, str] = {}
    if sim_url and "llm_provider" in settings_fields:
        env.update({"QUARRY_LLM_PROVIDER": "openai", "QUARRY_LLM_BASE_URL": f"{sim_url}/v1",
                    "QUARRY_LLM_API_KEY": "sim", "QUARRY_LLM_MODEL": "sim-llm"})
    if "chat_max_streams_per_tenant" in settings_fields:
        env["QUARRY_CHAT_MAX_STREAMS_PER_TENANT"] = "100000"
    if "rate_limits" in settings_fields:
        # Every route class limited at 10^6 requests/min per key and per tenant: the limiter
        # still runs (its Redis round trip is part of every request) but never refuses the load.
        defaults = str(getattr(load_settings(environ={}, dotenv=None), "rate_limits", ""))
        env["QUARRY_RATE_LIMITS"] = re.sub(r"\d+/\d+", "1000000/1000000", defaults)
    return env


def _naive(settings_fields: set[str]) -> str:
    """The naive configuration of the comparisons: one worker, and where the settings exist,
    no search/embedding cache and a pool of one connection."""
    parts = ["QUARRY_API_WORKERS=1"]
    for field, value in (("search_cache_ttl_s", "0"), ("embedding_cache_ttl_s", "0"), ("db_pool_max", "1")):
        if field in settings_fields:
            parts.append(f"QUARRY_{field.upper()}={value}")
    if "db_pool_max" in settings_fields and "db_pool_min" in settings_fields:
        parts.append("QUARRY_DB_POOL_MIN=1")
    return ",".join(parts)


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.profile = _profile(args)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        self.out: Path = (args.out or REPORTS / f"{self.profile.name}-{stamp}").resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.temp_data = args.data_dir is None
        self.data_dir: Path = (args.data_dir or Path(tempfile.mkdtemp(prefix="quarry-perf-"))).resolve()
        self.sampler = ResourceSampler()
        self.servers: list[Server] = []
        self.platform: Platform | None = None
        self.phases: list[Phase] = []
        self.notes: list[str] = []
        self.metrics_token = secrets.token_hex(16)
        self.bench_corpus = False
        self.meta: dict[str, Any] = {"profile": self.profile.name, "description": self.profile.description,
                                     "command": "quarry perf " + " ".join(args.argv),
                                     "machine": _machine(), "data_dir": str(self.data_dir),
                                     "reused_data_dir": not self.temp_data and (self.data_dir / "postgres").exists()}

    # --- the whole run ---------------------------------------------------------------------
    def execute(self) -> int:
        started = time.time()
        self.sampler.start()
        try:
            self._run()
        finally:
            self._stop_all()
            self.meta.update(started=started, ended=time.time())
        from perf.report import write_report

        report = write_report(self.out, self.meta, self.phases, self.sampler.samples, self.notes)
        print(report["markdown_text"])
        print(f"\nreport: {report['markdown']}  (json: {report['json']}; plots in {self.out})", flush=True)
        measured = [p for p in self.phases if p.kind in ("main", "revision")]
        for target in {p.target for p in measured}:
            records = (s for p in measured if p.target == target for s in read_records(Path(p.records)))
            if not any(s.ok for s in records if s.name != "__users__"):
                log(f"no request against {target} succeeded")
                return 1
        if any(p.exit_code not in (0, None) for p in self.phases):
            return 1
        return 0

    def _start_llm(self) -> dict[str, str]:
        """Start the simulated LLM; the platform's settings for this run."""
        args = self.args
        fields = set(Settings.__struct_fields__)
        sim = Server.simllm(dict(os.environ, PYTHONPATH=str(REPO)), self.out / "simllm.log", args.llm_ttft_ms,
                            args.llm_tokens_per_s, args.llm_tokens).start()
        self.servers.append(sim)
        self.sampler.track("simllm", sim.proc.pid if sim.proc else 0)
        overrides = _settings_overrides(fields, sim.url)
        if "metrics_token" in fields:  # /metrics behind a token of this run's own
            overrides["QUARRY_METRICS_TOKEN"] = self.metrics_token
        overrides.update(_pairs(",".join(args.platform_env)))
        return overrides

    def _tenant(self, admin_url: str) -> str:
        """`perf`, or the benchmark's tenant when the (copied) database holds the search
        benchmark's corpus: then that corpus is used as it is."""
        self.bench_corpus = bool(self.args.corpus_from) and _has_tenant(admin_url, BENCH_TENANT)
        return BENCH_TENANT if self.bench_corpus else PERF_TENANT

    def _copy_corpus(self, data_dir: Path) -> None:
        """--corpus-from: a data dir without a database starts from a copy of that dir's database."""
        if self.args.corpus_from and not (data_dir / "postgres").exists():
            seconds = copy_database(self.args.corpus_from.resolve(), data_dir)
            self.meta["corpus_from"] = str(self.args.corpus_from)
            self.meta.setdefault("corpus_copies", []).append({"into": str(data_dir), "seconds": round(seconds, 1)})

    def _corpus(self, url: str, key: str) -> Corpus:
        if self.bench_corpus:
            if self.args.chunks:
                self.notes.append("--chunks ignored: the corpus is the copied benchmark database as it is")
            return existing_corpus(url, key, seed=self.args.seed)
        return seed_corpus(url, key, self.profile.chunks, seed=self.args.seed)

    def _run(self) -> None:
        prof, args = self.profile, self.args
        settings: Settings = load_settings(environ={}, dotenv=None)
        overrides = self._start_llm()
        workers = int(overrides.get("QUARRY_API_WORKERS", settings.api_workers))
        self._copy_corpus(self.data_dir)
        self.platform = Platform(self.data_dir, self.out / "platform.log", overrides)
        self.platform.start()
        assert self.platform.proc is not None
        self.sampler.track("platform", self.platform.proc.pid, by_role=True)
        admin_url = self.platform.endpoints["database_url"]
        self.sampler.db_probe = postgres_probe(admin_url)
        self.sampler.redis_probe = redis_probe(self.platform.endpoints["redis_url"])
        chat_ok, chat_reason = _chat_available(self.platform.url)
        self.meta["platform"] = {"url": self.platform.url, "api_workers": workers, "overrides": overrides}
        self.meta["llm"] = {"ttft_ms": args.llm_ttft_ms, "tokens_per_s": args.llm_tokens_per_s,
                            "tokens": args.llm_tokens, "chat_available": chat_ok, "chat": chat_reason}
        keys = create_perf_keys(admin_url, self._tenant(admin_url), max(1, prof.keys))
        corpus = self._corpus(self.platform.url, keys[0])
        self.meta["corpus"] = {k: v for k, v in corpus.__dict__.items() if k != "samples"}
        queries = build_queries(corpus, args.queries, args.seed)
        zipf = ZipfPicker(queries, args.zipf_s)
        self.meta["queries"] = {"distinct": len(queries), "zipf_s": args.zipf_s, "top": queries[:5],
                                "top1_share": round(zipf.probability(1), 4),
                                "ideal_hit_rate_10k": round(zipf.expected_hit_rate(10_000), 4)}
        weights = dict(prof.weights)
        scenario = prof.scenario
        if not chat_ok:
            message = f"chat scenario skipped: {chat_reason}"
            log(message)
            self.notes.append(message)
            weights.pop("chat", None)
            if scenario == "chat":
                return
        collections = corpus.scope
        _warm_up(self.platform.url, keys[0], queries, collections, chat_ok and "chat" in weights)
        sample = _sample_payload(self.platform.url, keys[0], queries[0], collections, self.out / "search-sample.json")
        self.meta["search_payload_bytes"] = sample.stat().st_size

        def config(base_url: str, steps: list[tuple[int, float]], think: tuple[float, float], spawn: float,
                   stop: dict[str, float] | None = None) -> LoadConfig:
            return LoadConfig(base_url=base_url, records="", keys=keys, collections=collections,
                              upload_collection=corpus.upload_collection_id, queries=queries,
                              questions=chat_questions(200, args.seed), zipf_s=args.zipf_s, think_s=think,
                              weights=weights, steps=steps, spawn_rate=spawn, stop_on_slo=stop, seed=args.seed)

        stop = SLO().__dict__ if prof.stress else None
        main = config(self.platform.url, prof.steps, prof.think_s, prof.spawn_rate, stop)
        main.warmup_s = prof.warmup_s
        metrics_url = f"{self.platform.url}/metrics"
        metrics_auth = {"Authorization": f"Bearer {self.metrics_token}"}
        before = scrape(metrics_url, metrics_auth)
        phase = run_phase("main", "main", "platform", scenario, main, self.out, self.sampler)
        phase.metrics_before = before
        phase.metrics_after = scrape(metrics_url, metrics_auth)
        self.meta["metrics_available"] = phase.metrics_after is not None
        for text, name in ((before, "metrics-before.txt"), (phase.metrics_after, "metrics-after.txt")):
            if text is not None:
                (self.out / name).write_text(text)
        self.phases.append(phase)
        if prof.compare:
            self._compare(config, workers, sample)

    def _compare(self, config: Any, workers: int, sample: Path) -> None:
        prof, args = self.profile, self.args
        assert self.platform is not None
        label = _naive(set(Settings.__struct_fields__)) if args.compare == "naive" else args.compare
        compare_env = _pairs(label)
        b_workers = int(compare_env.get("QUARRY_API_WORKERS", workers))
        second = Server.granian("compare", "api.app:app_factory", b_workers, self.platform.child_env(**compare_env),
                                self.out / "compare-api.log").start(timeout=120)
        self.servers.append(second)
        ceiling = Server.granian("ceiling", "perf.ceiling:app_factory", workers,
                                 dict(self.platform.env, QUARRY_CEILING_PAYLOAD=str(sample)),
                                 self.out / "ceiling.log").start()
        self.servers.append(ceiling)
        for server in (second, ceiling):
            assert server.proc is not None
            self.sampler.track(server.name, server.proc.pid)
        self.meta["compare"] = {"label": label, "name": args.compare, "settings": compare_env, "workers": b_workers,
                                "ceiling_workers": workers, "users": prof.compare_users,
                                "segment_s": prof.compare_s, "rounds": prof.compare_rounds}
        targets = {"platform": self.platform.url, "compare": second.url, "ceiling": ceiling.url}
        users = prof.compare_users
        # A short unmeasured warm-up of each server (the second API loads its embedder lazily).
        for name, url in targets.items():
            run_phase(f"warmup-{name}", "warmup", name, "search",
                      config(url, [(users, 4.0)], (0.0, 0.0), float(users)), self.out)
        for r in range(prof.compare_rounds):
            for name, url in targets.items():
                self.phases.append(run_phase(f"cmp{r + 1}-{name}", "compare", name, "search",
                                             config(url, [(users, prof.compare_s)], (0.0, 0.0), float(users)),
                                             self.out, self.sampler))
        for server in (second, ceiling):
            self.sampler.untrack(server.name)
            server.stop()

    def _stop_all(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        if self.platform is not None:
            self.platform.stop()
        self.sampler.stop()
        if self.temp_data and not self.args.keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args.argv = argv
    if args.profile not in PROFILES:
        raise SystemExit(f"unknown profile {args.profile}")

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    run_class: type[Run] = Run
    if args.rev:
        from perf.suite.revrun import RevisionRun

        run_class = RevisionRun
    try:
        return run_class(args).execute()
    except KeyboardInterrupt:
        log("interrupted; everything was stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
