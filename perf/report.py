"""The report of a perf run: JSON + Markdown + PNG plots, computed from the per-request records.

    .venv/bin/python -m perf.report perf/reports/suite/<run>/     # rebuild a run's report

Judged on the main phase's steady window (after users finished spawning): for stress, on the
last step that kept the SLO. Targets (the scalability plan):

| target | measured as |
|---|---|
| 200-500 concurrent users | the most users running in the window |
| p95 < 500 ms, API calls | search, upload, browse requests together |
| p95 < 2 s, LLM calls | a streamed chat's time to first token (`chat total` is reported too) |
| 100-200 requests/s | HTTP requests completed per second (>= 100 passes) |
| cache hit rate > 70 % | from /metrics counters over the main phase, when the API exposes them |
| error rate < 0.1 % | failed / all requests (HTTP >= 400, timeouts, `error` events, cut streams) |
| no memory leak | API RSS growth over the window (< 10 %), judged on runs of >= 5 minutes |
| no pool instability | Postgres client connections: no growth (<= +2) and below 90 % of max_connections |
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from perf.suite.revreport import revision_comparison, revision_markdown
from perf.suite.runner import Phase
from perf.suite.sampler import cache_hit_rates
from perf.suite.stats import (
    LLM_TOTAL,
    SLO,
    USERS,
    Sample,
    by_class,
    by_name,
    cache_share,
    classify,
    drift,
    max_users,
    summarize,
    timeline,
    verdict,
    window,
)
from perf.suite.workload import LoadConfig, read_records

__all__ = ["analyze", "markdown", "targets", "write_report"]

LEAK_MIN_S = 300.0
LEAK_GROWTH = 0.10
PG_MAX_CONNECTIONS = 300  # storage.embedded.EmbeddedPostgres default


def _fmt(value: Any, unit: str = "", digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value}{unit}"


def _pct(value: float | None, digits: int = 1) -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"{value * 100:.{digits}f} %"


# --- analysis ----------------------------------------------------------------------------------


def _role_series(resources: Sequence[dict[str, Any]], role: str, key: str) -> tuple[list[float], list[float]]:
    ts, vs = [], []
    for r in resources:
        entry = r.get("roles", {}).get(role)
        if entry is not None:
            ts.append(r["t"])
            vs.append(float(entry[key]))
    return ts, vs


def _series(resources: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pairs = [(r["t"], float(r[key])) for r in resources if key in r]
    return [t for t, _ in pairs], [v for _, v in pairs]


def resource_summary(resources: Sequence[dict[str, Any]], start: float, end: float) -> dict[str, Any]:
    inside = [r for r in resources if start <= r["t"] <= end]
    roles: dict[str, dict[str, float]] = {}
    names = sorted({role for r in inside for role in r.get("roles", {})})
    for role in names:
        _, cpu = _role_series(inside, role, "cpu")
        _, rss = _role_series(inside, role, "rss_mb")
        if cpu:
            roles[role] = {"cpu_mean": sum(cpu) / len(cpu), "cpu_max": max(cpu), "rss_mean_mb": sum(rss) / len(rss),
                           "rss_max_mb": max(rss)}
    out: dict[str, Any] = {"roles": roles}
    for key in ("machine_cpu", "other_cpu", "db_connections", "db_active", "redis_used_memory_mb", "redis_clients"):
        _, values = _series(inside, key)
        if values:
            out[key] = {"mean": sum(values) / len(values), "max": max(values), "min": min(values),
                        "last": values[-1]}
    return out


def drifts(resources: Sequence[dict[str, Any]], samples: Sequence[Sample], start: float, end: float) -> dict[str, Any]:
    inside = [r for r in resources if start <= r["t"] <= end]
    out: dict[str, Any] = {}
    for role in ("api", "arq", "postgres", "valkey"):
        ts, rss = _role_series(inside, role, "rss_mb")
        if ts:
            out[f"{role}_rss_mb"] = drift(ts, rss)
    for key in ("db_connections", "redis_used_memory_mb"):
        ts, values = _series(inside, key)
        if ts:
            out[key] = drift(ts, values)
    rows = timeline(samples, start, end, bucket_s=max(5.0, (end - start) / 60))
    out["api_p95_ms"] = drift([r["t"] for r in rows], [r["api_p95_ms"] for r in rows])
    return out


def _steady_window(phase: Phase, config: LoadConfig) -> tuple[float, float]:
    end = min(phase.end, phase.start + config.duration_s)
    return phase.steady_start, max(phase.steady_start + 1.0, end)


def analyze(phase: Phase, resources: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Everything about the main phase: totals, the judged window, stress steps, drift."""
    config = LoadConfig.load(phase.config_path)
    samples = read_records(Path(phase.records))
    start, end = _steady_window(phase, config)
    steps = []
    for v in phase.verdicts:
        inside = window(samples, v["start"] + config.settle_s, v["end"])
        duration = v["end"] - v["start"] - config.settle_s
        api = [s for s in inside if classify(s.name) == "api"]
        # Judged again on every request that started in the step, also those that finished
        # after it ended (the load shape judged online, without requests still in flight).
        final = verdict(inside, SLO(**config.stop_on_slo)) if config.stop_on_slo else None
        steps.append({**v, "online_broken": v["broken"], "rps": summarize(inside, duration)["rps"],
                      **{k: summarize(api, duration)[k] for k in ("p50_ms", "p99_ms")},
                      "users_reached": max_users(inside),
                      **({"broken": final.broken, "reasons": final.reasons, "api_p95_ms": final.api_p95_ms,
                          "llm_p95_ms": final.llm_p95_ms, "error_rate": final.error_rate} if final else {})})
    judged: dict[str, Any] = {"start": start, "end": end, "label": "steady window"}
    if steps:
        first_broken = next((i for i, s in enumerate(steps) if s["broken"]), len(steps))
        good = steps[:first_broken]
        pick = good[-1] if good else steps[0]
        judged = {"start": pick["start"] + config.settle_s, "end": pick["end"],
                  "label": f"stress step at {pick['users']} users (the last that kept the SLO)" if good
                  else f"first stress step ({pick['users']} users; it already broke the SLO)"}
    inside = window(samples, judged["start"], judged["end"])
    duration = judged["end"] - judged["start"]
    statuses: dict[str, int] = {}
    for s in inside:
        if s.name != USERS and not s.ok:
            key = str(s.status or "no response")
            statuses[key] = statuses.get(key, 0) + 1
    breaking = next((s for s in steps if s["broken"]), None)
    return {
        "config": {"steps": config.steps, "think_s": config.think_s, "weights": config.weights,
                   "spawn_rate": config.spawn_rate, "zipf_s": config.zipf_s, "queries": len(config.queries)},
        "window": judged, "duration_s": duration,
        "total": summarize([s for s in samples if s.t >= phase.start], max(1e-9, phase.end - phase.start)),
        "total_classes": by_class([s for s in samples if s.t >= phase.start], max(1e-9, phase.end - phase.start)),
        "judged": summarize(inside, duration), "classes": by_class(inside, duration),
        "names": by_name(inside, duration), "users": max_users(inside), "errors_by_status": statuses,
        "timeline": timeline(samples, phase.start, phase.end, bucket_s=5.0 if phase.end - phase.start < 900 else 30.0),
        "steps": steps,
        "breaking_point": None if breaking is None else {"users": breaking["users"], "reasons": breaking["reasons"]},
        "resources": resource_summary(resources, judged["start"], judged["end"]),
        "drift": drifts(resources, inside, judged["start"], judged["end"]),
        "cache": cache_hit_rates(phase.metrics_before, phase.metrics_after),
        "x_cache": cache_share(s for s in inside if s.name == "search"),
    }


def compare(phases: Sequence[Phase], trim_s: float = 2.0,
            resources: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Interleaved segments per target: rps and latency of all rounds together, and ratios;
    with `resources`, the load generator's mean CPU during each target's segments."""
    per: dict[str, dict[str, Any]] = {}
    rounds: dict[str, list[dict[str, Any]]] = {}
    for target in ("platform", "compare", "ceiling"):
        segs = [p for p in phases if p.kind == "compare" and p.target == target]
        if not segs:
            continue
        pooled: list[Sample] = []
        seconds = 0.0
        for p in segs:
            config = LoadConfig.load(p.config_path)
            start, end = p.start + trim_s, min(p.end, p.start + config.duration_s)
            inside = window(read_records(Path(p.records)), start, end)
            pooled += inside
            seconds += max(0.0, end - start)
            rounds.setdefault(target, []).append(summarize(inside, end - start))
        per[target] = summarize(pooled, seconds)
        cpu = [r["roles"]["locust"]["cpu"] for r in resources if "locust" in r.get("roles", {})
               and any(p.start + trim_s <= r["t"] <= p.end for p in segs)]
        per[target]["locust_cpu"] = sum(cpu) / len(cpu) if cpu else math.nan
    ratios: dict[str, float] = {}

    def ratio(a: str, b: str, key: str) -> float:
        x, y = per.get(a, {}).get(key), per.get(b, {}).get(key)
        return x / y if x and y and not math.isnan(x) and not math.isnan(y) else math.nan

    if per:
        ratios = {"platform_vs_ceiling_rps": ratio("platform", "ceiling", "rps"),
                  "compare_vs_ceiling_rps": ratio("compare", "ceiling", "rps"),
                  "platform_vs_compare_rps": ratio("platform", "compare", "rps"),
                  "platform_vs_compare_p95": ratio("platform", "compare", "p95_ms"),
                  "platform_vs_ceiling_p95": ratio("platform", "ceiling", "p95_ms")}
    return {"targets": per, "rounds": rounds, "ratios": ratios}


def targets(main: dict[str, Any], llm_available: bool) -> list[dict[str, Any]]:
    """One row per target of the scalability plan: measured value and PASS / FAIL / n/a."""
    judged, classes, res, dr = main["judged"], main["classes"], main["resources"], main["drift"]
    rows: list[dict[str, Any]] = []

    def row(target: str, measured: str, status: str, note: str = "") -> None:
        rows.append({"target": target, "measured": measured, "status": status, "note": note})

    users = main["users"]
    row("200-500 concurrent users", f"{users}", "PASS" if users >= 200 else "below",
        "" if users >= 200 else "this profile runs fewer users than the target range")
    api = classes.get("api", {})
    p95 = api.get("p95_ms", math.nan)
    row("p95 < 500 ms (API calls)", _fmt(p95, " ms"), "n/a" if math.isnan(p95) else ("PASS" if p95 < 500 else "FAIL"))
    llm = classes.get("llm", {})
    llm95 = llm.get("p95_ms", math.nan)
    total95 = main["names"].get(LLM_TOTAL, {}).get("p95_ms", math.nan)
    if not llm_available or math.isnan(llm95):
        row("p95 < 2 s (LLM calls)", "—", "n/a", "no chat in this run")
    else:
        row("p95 < 2 s (LLM calls)", f"TTFT {_fmt(llm95, ' ms')}", "PASS" if llm95 < 2000 else "FAIL",
            f"whole answer p95 {_fmt(total95, ' ms')}")
    rps = judged["rps"]
    row("100-200 requests/s", _fmt(rps, " rps", 1), "PASS" if rps >= 100 else "below",
        "" if rps >= 100 else "offered load (users / think time) is below the band")
    cache = main["cache"]
    pick = cache.get("search") or cache.get("result") or (next(iter(cache.values())) if cache else None)
    seen = main.get("x_cache") or {}
    seen_rate = seen.get("hit_rate", math.nan)
    if pick and not math.isnan(pick["hit_rate"]):
        name = next(k for k, v in cache.items() if v is pick)
        row("cache hit rate > 70 %", f"{_pct(pick['hit_rate'])} ({name}, /metrics)",
            "PASS" if pick["hit_rate"] > 0.7 else "FAIL",
            "" if math.isnan(seen_rate) else f"search responses with X-Cache: hit: {_pct(seen_rate)}")
    elif not math.isnan(seen_rate):
        row("cache hit rate > 70 %", f"{_pct(seen_rate)} (search results)", "PASS" if seen_rate > 0.7 else "FAIL",
            f"X-Cache: hit on {seen['hits']:.0f} of {seen['hits'] + seen['misses']:.0f} search responses "
            "(no cache counters on /metrics)")
    else:
        row("cache hit rate > 70 %", "—", "n/a", "no cache counters on /metrics and no X-Cache headers")
    rate = judged["error_rate"]
    row("error rate < 0.1 %", f"{_pct(rate, 3)} ({judged['errors']}/{judged['count']})",
        "PASS" if rate < 0.001 else "FAIL")
    rss = dr.get("api_rss_mb", {})
    growth = rss.get("growth", math.nan)
    long_enough = main["duration_s"] >= LEAK_MIN_S
    measured = (f"API RSS {_fmt(rss.get('first'), ' MB')} → {_fmt(rss.get('last'), ' MB')} ({_pct(growth)}), "
                f"{_fmt(rss.get('slope_per_min'), ' MB/min', 2)}")
    if math.isnan(growth):
        row("no memory leak", "—", "n/a", "no RSS samples")
    elif not long_enough:
        row("no memory leak", measured, "n/a", f"window {main['duration_s']:.0f} s < {LEAK_MIN_S:.0f} s: indicative")
    else:
        row("no memory leak", measured, "PASS" if growth < LEAK_GROWTH else "FAIL")
    conns = dr.get("db_connections", {})
    cmax = res.get("db_connections", {}).get("max", math.nan)
    if math.isnan(conns.get("first", math.nan)):
        row("no pool instability", "—", "n/a", "no pg_stat_activity samples")
    else:
        grew = conns["last"] - conns["first"]
        ok = grew <= 2 and cmax < 0.9 * PG_MAX_CONNECTIONS
        row("no pool instability", f"DB connections {conns['first']:.0f} → {conns['last']:.0f} (max {cmax:.0f})",
            "PASS" if ok else "FAIL")
    return rows


# --- plots -------------------------------------------------------------------------------------


def plots(out: Path, main: dict[str, Any] | None, phase: Phase | None, resources: Sequence[dict[str, Any]],
          cmp: dict[str, Any], t0: float) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[str] = []
    if main and phase:
        rows = main["timeline"]
        ts = [r["t"] for r in rows]
        fig, ax = plt.subplots(figsize=(10, 4.5))
        for key, label in (("api_p50_ms", "API p50"), ("api_p95_ms", "API p95"), ("api_p99_ms", "API p99"),
                           ("llm_p95_ms", "chat TTFT p95")):
            values = [r[key] for r in rows]
            if any(not math.isnan(v) for v in values):
                ax.plot(ts, values, label=label)
        ax.axhline(500, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("seconds into the phase")
        ax.set_ylabel("latency (ms)")
        ax.set_yscale("log")
        twin = ax.twinx()
        users = [r["users"] or 0 for r in rows]
        twin.plot(ts, users, color="black", alpha=0.3, label="users")
        twin.set_ylim(0, max(users, default=0) * 1.1 + 1)
        twin.set_ylabel("users (grey)")
        for step in main["steps"]:
            ax.axvline(step["start"] - phase.start, color="grey", lw=0.5, alpha=0.5)
        ax.legend(loc="upper left")
        ax.set_title(f"latency percentiles over time ({phase.name})")
        fig.tight_layout()
        fig.savefig(out / "latency.png", dpi=90)
        plt.close(fig)
        made.append("latency.png")

        fig, ax = plt.subplots(figsize=(10, 3.5))
        ax.plot(ts, [r["rps"] for r in rows], label="requests/s")
        ax.plot(ts, [r["errors_per_s"] for r in rows], label="errors/s", color="red")
        ax.set_xlabel("seconds into the phase")
        ax.legend(loc="upper left")
        ax.set_title("throughput and errors")
        fig.tight_layout()
        fig.savefig(out / "throughput.png", dpi=90)
        plt.close(fig)
        made.append("throughput.png")

    if resources:
        fig, axes = plt.subplots(2, 2, figsize=(12, 7))
        roles = sorted({role for r in resources for role in r.get("roles", {})})
        for role in roles:
            ts, cpu = _role_series(resources, role, "cpu")
            _, rss = _role_series(resources, role, "rss_mb")
            axes[0][0].plot([t - t0 for t in ts], cpu, label=role, lw=0.8)
            axes[0][1].plot([t - t0 for t in ts], rss, label=role, lw=0.8)
        axes[0][0].set_title("CPU (% of one core)")
        axes[0][1].set_title("RSS (MB)")
        axes[0][0].legend(fontsize=7, ncol=2)
        for key, ax, title in (("db_connections", axes[1][0], "Postgres client connections"),
                               ("redis_used_memory_mb", axes[1][1], "Redis used memory (MB)")):
            ts, values = _series(resources, key)
            ax.plot([t - t0 for t in ts], values)
            ax.set_title(title)
        for ax in axes.flat:
            ax.set_xlabel("seconds into the run")
            if phase:
                ax.axvspan(phase.start - t0, phase.end - t0, color="orange", alpha=0.08)
        fig.tight_layout()
        fig.savefig(out / "resources.png", dpi=90)
        plt.close(fig)
        made.append("resources.png")

    if cmp.get("targets"):
        names = list(cmp["targets"])
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
        a1.bar(names, [cmp["targets"][n]["rps"] for n in names])
        a1.set_title("requests/s (closed loop)")
        a2.bar(names, [cmp["targets"][n]["p95_ms"] for n in names], color="tab:orange")
        a2.set_title("p95 (ms)")
        fig.tight_layout()
        fig.savefig(out / "compare.png", dpi=90)
        plt.close(fig)
        made.append("compare.png")
    return made


# --- markdown ----------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    meta, main = report["meta"], report.get("main")
    lines = [f"# quarry perf {meta['profile']}", "", meta.get("description", ""), ""]
    m = meta["machine"]
    corpus = meta.get("corpus", {})
    plat = meta.get("platform", {})
    copies = meta.get("corpus_copies") or []
    seeded = (f"seeded now: {corpus.get('seeded_now')} documents in {corpus.get('seconds')} s"
              if corpus.get("seeded_now") else "reused from the data dir")
    if copies:
        seeded = (f"the database copied from `{meta.get('corpus_from')}` in {copies[0]['seconds']} s, "
                  + ("used as it is" if corpus.get("collection_ids") else seeded))
    lines += [f"`{meta.get('command', '')}` · git {m['git']} · {m['cpus']} CPUs · Python {m['python']} · "
              f"load average at start {m['loadavg_at_start']}", "",
              f"Platform: `quarry up` (embedded Postgres + Valkey, Dagster off), {plat.get('api_workers')} API "
              f"workers; corpus {corpus.get('chunks')} chunks in {corpus.get('documents')} documents "
              f"({seeded}). "
              f"Simulated LLM: TTFT {meta.get('llm', {}).get('ttft_ms')} ms, "
              f"{meta.get('llm', {}).get('tokens_per_s')} tokens/s, {meta.get('llm', {}).get('tokens')} tokens; "
              f"chat: {meta.get('llm', {}).get('chat')}.", ""]
    if main:
        cfg = main["config"]
        lines += [f"Workload: {cfg['weights']} · think {cfg['think_s'][0]}-{cfg['think_s'][1]} s · "
                  f"{cfg['queries']} distinct queries, Zipf s={cfg['zipf_s']} · steps {cfg['steps']}", "",
                  f"## Targets ({main['window']['label']}, {main['duration_s']:.0f} s)", "",
                  _table(["target", "measured", "status", "note"],
                         [[r["target"], r["measured"], r["status"], r["note"]] for r in report["targets"]]), ""]
        whole, api_all = main["total"], main.get("total_classes", {}).get("api", {})
        lines += [f"Whole phase, ramp-up and warm-up included: {whole['count']} measurements, {whole['errors']} "
                  f"errors; API calls p50 {_fmt(api_all.get('p50_ms'), ' ms')} / p95 "
                  f"{_fmt(api_all.get('p95_ms'), ' ms')} / p99 {_fmt(api_all.get('p99_ms'), ' ms')}. "
                  "The plots show the whole phase.", ""]
        if main["breaking_point"]:
            bp = main["breaking_point"]
            lines += [f"**Breaking point: {bp['users']} users** — {'; '.join(bp['reasons'])}.", ""]
        elif main["steps"]:
            lines += [f"No step broke the SLO (up to {main['steps'][-1]['users']} users).", ""]
        if main["steps"]:
            lines += ["## Stress steps", "", _table(
                ["users", "req/s", "API p50", "API p95", "API p99", "chat TTFT p95", "errors", "SLO"],
                [[s["users"], _fmt(s["rps"], "", 1), _fmt(s["p50_ms"], " ms"), _fmt(s["api_p95_ms"], " ms"),
                  _fmt(s["p99_ms"], " ms"), _fmt(s["llm_p95_ms"], " ms"), _pct(s["error_rate"], 2),
                  "broken: " + "; ".join(s["reasons"]) if s["broken"] else "kept"] for s in main["steps"]]), ""]
        lines += ["## Requests (judged window)", "", _table(
            ["request", "count", "req/s", "p50", "p95", "p99", "max", "errors"],
            [[n, s["count"], _fmt(s["rps"], "", 1), _fmt(s["p50_ms"], " ms"), _fmt(s["p95_ms"], " ms"),
              _fmt(s["p99_ms"], " ms"), _fmt(s["max_ms"], " ms"), s["errors"]] for n, s in main["names"].items()]), ""]
        if main["errors_by_status"]:
            lines += [f"Errors by status: {main['errors_by_status']}", ""]
    cmp = report.get("compare", {})
    if cmp.get("targets"):
        c = meta.get("compare", {})
        lines += ["## Comparisons (interleaved, same run)", "",
                  f"The search workload, closed loop ({c.get('users')} users, no think time), "
                  f"{c.get('rounds')} round(s) of {c.get('segment_s')} s per target, interleaved. "
                  f"`platform` = the default configuration ({plat.get('api_workers')} workers); "
                  f"`compare` = `{c.get('name') or 'compare'}`: `{c.get('label')}`; "
                  f"`ceiling` = perf/ceiling.py (bare Granian + Litestar, "
                  f"{c.get('ceiling_workers')} workers, the same {meta.get('search_payload_bytes')}-byte search "
                  f"response).", "",
                  _table(["target", "req/s", "p50", "p95", "p99", "errors", "Locust CPU"],
                         [[n, _fmt(s["rps"], "", 1), _fmt(s["p50_ms"], " ms"), _fmt(s["p95_ms"], " ms"),
                           _fmt(s["p99_ms"], " ms"), s["errors"], _fmt(s.get("locust_cpu"), " %")]
                          for n, s in cmp["targets"].items()]), "",
                  "Locust CPU near 100 % means the single-process load generator, not the server, set the pace "
                  "(it shares the machine's cores with the server).", ""]
        r = cmp["ratios"]
        short = c.get("name") if c.get("name") and c.get("name") != c.get("label") else c.get("label")
        lines += [f"- platform = **{_pct(r['platform_vs_ceiling_rps'])} of the HTTP ceiling** (requests/s); "
                  f"`{short}` = {_pct(r['compare_vs_ceiling_rps'])}.",
                  f"- platform / `{short}`: **{_fmt(r['platform_vs_compare_rps'], 'x', 2)} requests/s**, "
                  f"p95 ratio {_fmt(r['platform_vs_compare_p95'], 'x', 2)}.", ""]
    lines += revision_markdown(report.get("revisions") or {}, meta)
    if main:
        res = main["resources"]
        lines += ["## Resources (judged window)", "", _table(
            ["process group", "CPU mean", "CPU max", "RSS mean", "RSS max"],
            [[role, _fmt(v["cpu_mean"], " %"), _fmt(v["cpu_max"], " %"), _fmt(v["rss_mean_mb"], " MB"),
              _fmt(v["rss_max_mb"], " MB")] for role, v in res["roles"].items()]), "",
            "CPU is % of one core (the machine has "
            f"{m['cpus']}); `locust` is the load generator on the same machine. Machine CPU mean "
            f"{_fmt(res.get('machine_cpu', {}).get('mean'), ' %')} of all cores, of which processes outside "
            f"this run used {_fmt(res.get('other_cpu', {}).get('mean'), ' %')} of one core on average (a "
            f"shared machine); Postgres connections mean "
            f"{_fmt(res.get('db_connections', {}).get('mean'), '', 1)} (max "
            f"{_fmt(res.get('db_connections', {}).get('max'))}); Redis used memory "
            f"{_fmt(res.get('redis_used_memory_mb', {}).get('last'), ' MB', 1)}.", ""]
        lines += ["## Drift over the judged window", "", _table(
            ["series", "first fifth", "last fifth", "growth", "slope / min", "R²"],
            [[k, _fmt(v["first"], "", 1), _fmt(v["last"], "", 1), _pct(v["growth"]), _fmt(v["slope_per_min"], "", 3),
              _fmt(v["r2"], "", 2)] for k, v in main["drift"].items()]), ""]
        if main["cache"]:
            lines += ["Cache hit rates from /metrics: " + ", ".join(
                f"{k} {_pct(v['hit_rate'])} ({v['hits']:.0f}/{v['hits'] + v['misses']:.0f})"
                for k, v in main["cache"].items()), ""]
    if report.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in report["notes"]], ""]
    lines += [f"![{p}]({p})" for p in report.get("plots", [])]
    return "\n".join(lines) + "\n"


# --- entry points ------------------------------------------------------------------------------


def _clean(obj: Any) -> Any:
    """JSON without NaN (as null)."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else round(obj, 4)
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def build(meta: dict[str, Any], phases: Sequence[Phase], resources: Sequence[dict[str, Any]],
          notes: Sequence[str]) -> dict[str, Any]:
    main_phase = next((p for p in phases if p.kind == "main"), None)
    main = analyze(main_phase, resources) if main_phase else None
    report: dict[str, Any] = {"meta": meta, "phases": [p.to_json() for p in phases], "main": main,
                              "compare": compare(phases, resources=resources), "notes": list(notes),
                              "revisions": revision_comparison(phases, resources)}
    if main:
        report["targets"] = targets(main, bool(meta.get("llm", {}).get("chat_available")))
        locust_cpu = main["resources"]["roles"].get("locust", {}).get("cpu_max", 0)
        if locust_cpu > 90:
            report["notes"].append(f"the load generator reached {locust_cpu:.0f} % of a core: at that point "
                                   "it, not the platform, may limit the offered load")
    return report


def write_report(out: Path, meta: dict[str, Any], phases: Sequence[Phase], resources: Sequence[dict[str, Any]],
                 notes: Sequence[str]) -> dict[str, Any]:
    # The raw inputs first: whatever happens below, `python -m perf.report DIR` can rebuild.
    (out / "resources.json").write_text(json.dumps(_clean(list(resources))))
    (out / "phases.json").write_text(json.dumps(_clean({"meta": meta, "phases": [p.to_json() for p in phases],
                                                        "notes": list(notes)}), indent=1))
    report = build(meta, phases, resources, notes)
    main_phase = next((p for p in phases if p.kind == "main"), None)
    try:
        report["plots"] = plots(out, report["main"], main_phase, resources, report["compare"],
                                meta.get("started", resources[0]["t"] if resources else 0.0))
    except ImportError as exc:  # matplotlib is in the `perf` extra
        report["notes"].append(f"no plots: {exc}")
        report["plots"] = []
    text = markdown(report)
    (out / "report.md").write_text(text)
    (out / "report.json").write_text(json.dumps(_clean(report), indent=1))
    return {"markdown": str(out / "report.md"), "json": str(out / "report.json"), "markdown_text": text}


def rebuild(out: Path) -> dict[str, Any]:
    """Recompute a run's report from its folder (records, configs, resources.json, phases.json)."""
    saved = json.loads((out / "phases.json").read_text())
    phases = [Phase(**p) for p in saved["phases"]]
    for p in phases:
        for attr, name in (("metrics_before", "metrics-before.txt"), ("metrics_after", "metrics-after.txt")):
            if p.kind == "main" and (out / name).exists():
                setattr(p, attr, (out / name).read_text())
    resources = json.loads((out / "resources.json").read_text())
    return write_report(out, saved["meta"], phases, resources, saved["notes"])


if __name__ == "__main__":
    result = rebuild(Path(sys.argv[1]))
    print(result["markdown_text"])
