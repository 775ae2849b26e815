"""`quarry perf PROFILE --rev A --rev B`: the profile's workload against two git revisions of the
platform, interleaved in one run, reported as ratios B/A with their spread over rounds.

Each revision runs from its own temporary worktree (perf/suite/revisions.py) as a whole platform
(`quarry up`: API, arq worker, embedded Postgres and Valkey) on its own data dir
`<data-dir>/<A|B>-<migrations digest>`, both up at once. The harness (seeding, keys, Locust,
report) is this checkout's. Corpus: A is seeded through its API (or starts from
`--corpus-from`); B starts from a file copy of A's seeded database when both have the same
migrations (the very same rows), and is seeded through its own API otherwise (the same
documents in the same order, chunked by B's code). Both get the same query mix.

Segments alternate A, B, B, A, A, B, ... (each round swaps the order, so a linear drift of the
machine weighs on both equally and neither always runs first); each segment is the profile's
own workload (users, think time, weights, duration, warm-up left out of the judged window).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.settings import Settings, load_settings
from perf.run import Run, _chat_available, _warm_up
from perf.suite.platform import REPO, Platform, create_perf_keys, log
from perf.suite.profiles import PROFILES
from perf.suite.revisions import Revision, copy_database, prepare_revisions, remove_worktrees
from perf.suite.runner import run_phase
from perf.suite.sampler import cache_hit_rates, postgres_probe, redis_probe, scrape
from perf.suite.seed import Corpus, build_queries, chat_questions
from perf.suite.workload import LoadConfig

__all__ = ["RevisionRun", "segment_order"]

DEFAULT_ROUNDS = 2


def segment_order(rounds: int) -> list[tuple[int, str]]:
    """(round, revision) in running order: A B, B A, A B, ..."""
    return [(r, label) for r in range(rounds) for label in (("A", "B") if r % 2 == 0 else ("B", "A"))]


def _combined(probes: dict[str, Callable[[], dict[str, Any]]]) -> Callable[[], dict[str, Any]]:
    def probe() -> dict[str, Any]:
        return {f"{label}_{k}": v for label, one in probes.items() for k, v in one().items()}

    return probe


class RevisionRun(Run):
    def __init__(self, args: argparse.Namespace) -> None:
        if PROFILES[args.profile].stress:
            raise SystemExit("quarry perf: --rev compares load, smoke or endurance workloads, not stress steps")
        super().__init__(args)
        self.repo = (args.rev_repo or REPO).resolve()
        self.revisions: list[Revision] = []
        self.platforms: dict[str, Platform] = {}
        self.meta["kind"] = "revisions"

    def _start(self, rev: Revision, data_dir: Path, overrides: dict[str, str]) -> Platform:
        platform = self.platforms.get(rev.label) or Platform(data_dir, self.out / f"platform-{rev.label}.log",
                                                            overrides, root=rev.root)
        self.platforms[rev.label] = platform
        log(f"revision {rev.label} ({rev.short}) from {rev.root}")
        platform.start()
        return platform

    def _run(self) -> None:
        prof, args = self.profile, self.args
        self.revisions = prepare_revisions(args.rev, self.repo, args.allow_dependency_drift)
        a, b = self.revisions
        self.meta["revisions"] = [{"label": r.label, "spec": r.spec, "sha": r.sha, "subject": r.subject,
                                   "root": str(r.root), "migrations": r.migrations,
                                   "dependency_problems": list(r.dependency_problems)} for r in self.revisions]
        self.meta["revisions_same_migrations"] = a.migrations == b.migrations
        settings: Settings = load_settings(environ={}, dotenv=None)
        overrides = self._start_llm()
        workers = int(overrides.get("QUARRY_API_WORKERS", settings.api_workers))
        dirs = {r.label: self.data_dir / f"{r.label}-{r.migrations}" for r in self.revisions}
        for d in dirs.values():
            self._copy_corpus(d)
        database: dict[str, str] = {}

        # A first: seeded (or reused, or copied from --corpus-from) through its own API.
        pa = self._start(a, dirs["A"], overrides)
        tenant = self._tenant(pa.endpoints["database_url"])
        keys = {"A": create_perf_keys(pa.endpoints["database_url"], tenant, max(1, prof.keys))}
        corpora: dict[str, Corpus] = {"A": self._corpus(pa.url, keys["A"][0])}
        database["A"] = (f"a copy of {args.corpus_from}" if args.corpus_from else "") + \
            ("" if self.bench_corpus else (", " if args.corpus_from else "") + "seeded (or reused) through its API")
        if not (dirs["B"] / "postgres").exists() and a.migrations == b.migrations:
            pa.stop()  # a consistent file copy needs the server stopped
            seconds = copy_database(dirs["A"], dirs["B"])
            database["B"] = f"a file copy of A's database ({seconds:.0f} s; same migrations)"
            pa.start()
        pb = self._start(b, dirs["B"], overrides)
        keys["B"] = create_perf_keys(pb.endpoints["database_url"], tenant, max(1, prof.keys))
        corpora["B"] = self._corpus(pb.url, keys["B"][0])
        database.setdefault("B", f"a copy of {args.corpus_from}" if args.corpus_from else
                            ("seeded through its own API (different migrations)" if a.migrations != b.migrations
                             else "reused from its data dir"))
        self.meta["databases"] = database
        for label, platform in self.platforms.items():
            assert platform.proc is not None
            self.sampler.track(f"platform-{label}", platform.proc.pid, by_role=True, role_prefix=f"{label}:")
        self.sampler.db_probe = _combined({k: postgres_probe(p.endpoints["database_url"])
                                           for k, p in self.platforms.items()})
        self.sampler.redis_probe = _combined({k: redis_probe(p.endpoints["redis_url"])
                                              for k, p in self.platforms.items()})

        chat = {k: _chat_available(p.url) for k, p in self.platforms.items()}
        chat_ok = all(ok for ok, _ in chat.values())
        self.meta["platform"] = {"api_workers": workers, "overrides": overrides,
                                 "urls": {k: p.url for k, p in self.platforms.items()}}
        self.meta["llm"] = {"ttft_ms": args.llm_ttft_ms, "tokens_per_s": args.llm_tokens_per_s,
                            "tokens": args.llm_tokens, "chat_available": chat_ok,
                            "chat": "; ".join(f"{k}: {why}" for k, (_, why) in chat.items())}
        self.meta["corpus"] = {k: v for k, v in corpora["A"].__dict__.items() if k != "samples"}
        self.meta["corpus_b"] = {k: v for k, v in corpora["B"].__dict__.items() if k != "samples"}
        if corpora["A"].chunks != corpora["B"].chunks:
            self.notes.append(f"the corpora differ: A holds {corpora['A'].chunks} chunks, B {corpora['B'].chunks} "
                              "(seeded separately: the revisions chunk differently)")
        queries = build_queries(corpora["A"], args.queries, args.seed)
        self.meta["queries"] = {"distinct": len(queries), "zipf_s": args.zipf_s, "top": queries[:5]}
        weights = dict(prof.weights)
        if not chat_ok:
            self.notes.append(f"chat left out of the workload: {self.meta['llm']['chat']}")
            weights.pop("chat", None)
            if prof.scenario == "chat":
                return
        for label, platform in self.platforms.items():
            _warm_up(platform.url, keys[label][0], queries, corpora[label].scope, chat_ok and "chat" in weights)

        def config(label: str) -> LoadConfig:
            c = corpora[label]
            out = LoadConfig(base_url=self.platforms[label].url, records="", keys=keys[label], collections=c.scope,
                             upload_collection=c.upload_collection_id, queries=queries,
                             questions=chat_questions(200, args.seed), zipf_s=args.zipf_s, think_s=prof.think_s,
                             weights=weights, steps=prof.steps, spawn_rate=prof.spawn_rate, seed=args.seed)
            out.warmup_s = prof.warmup_s
            return out

        rounds = args.rounds or DEFAULT_ROUNDS
        self.meta["rounds"] = rounds
        self.meta["order"] = [f"{label}{r + 1}" for r, label in segment_order(rounds)]
        auth = {"Authorization": f"Bearer {self.metrics_token}"}
        before = {k: scrape(f"{p.url}/metrics", auth) for k, p in self.platforms.items()}
        for r, label in segment_order(rounds):
            self.phases.append(run_phase(f"rev{r + 1}-{label}", "revision", label, prof.scenario, config(label),
                                         self.out, self.sampler))
        after = {k: scrape(f"{p.url}/metrics", auth) for k, p in self.platforms.items()}
        self.meta["revision_cache"] = {k: cache_hit_rates(before[k], after[k]) for k in self.platforms}

    def _stop_all(self) -> None:
        for platform in self.platforms.values():
            platform.stop()
        super()._stop_all()
        remove_worktrees(self.revisions, self.repo)
