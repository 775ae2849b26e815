"""The report of a revision comparison (`--rev A --rev B`): per revision, per round, and B/A.

Every segment is judged on its steady window (after the profile's warm-up). Pooled figures put
all of a revision's segments together; the per-round ratios pair round i of B with round i of A
(run back to back), and their min-max is the spread the machine's drift left in the ratio.
CPU per request is the CPU time the revision's whole platform (API, arq, Postgres, Valkey,
supervisor) used in its windows divided by the HTTP requests it completed there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from perf.suite.runner import Phase
from perf.suite.stats import LLM_TTFT, Sample, classify, summarize, window
from perf.suite.workload import LoadConfig, read_records

__all__ = ["METRICS", "revision_comparison", "revision_markdown"]

METRICS: tuple[tuple[str, str, str], ...] = (
    # key, label, unit
    ("rps", "requests/s", ""),
    ("api_p50_ms", "API p50", " ms"),
    ("api_p95_ms", "API p95", " ms"),
    ("api_p99_ms", "API p99", " ms"),
    ("ttft_p95_ms", "chat TTFT p95", " ms"),
    ("error_rate", "error rate", "%"),
    ("cpu_ms_per_request", "platform CPU per request", " ms"),
)


def _cpu_seconds(resources: Sequence[dict[str, Any]], label: str, start: float, end: float) -> float:
    """CPU seconds of every process of revision `label`'s platform between `start` and `end`."""
    prefix = f"{label}:"
    rows = [r for r in resources if start <= r["t"] < end]
    if not rows:
        return math.nan
    mean = sum(sum(v["cpu"] for k, v in r.get("roles", {}).items() if k.startswith(prefix)) for r in rows) / len(rows)
    return mean / 100 * (end - start)


def _figures(samples: list[Sample], seconds: float, cpu_s: float) -> dict[str, Any]:
    everything = summarize(samples, seconds)
    api = summarize([s for s in samples if classify(s.name) == "api"], seconds)
    ttft = summarize([s for s in samples if s.name == LLM_TTFT], seconds)
    http = everything["rps"] * seconds
    return {"rps": everything["rps"], "count": everything["count"], "errors": everything["errors"],
            "error_rate": everything["error_rate"], "api_p50_ms": api["p50_ms"], "api_p95_ms": api["p95_ms"],
            "api_p99_ms": api["p99_ms"], "ttft_p95_ms": ttft["p95_ms"], "seconds": seconds,
            "cpu_ms_per_request": cpu_s * 1000 / http if http and not math.isnan(cpu_s) else math.nan}


def _ratio(b: float, a: float) -> float:
    if any(x is None or math.isnan(x) for x in (a, b)) or a == 0:
        return math.nan
    return b / a


def revision_comparison(phases: Sequence[Phase], resources: Sequence[dict[str, Any]]) -> dict[str, Any]:
    segments: list[dict[str, Any]] = []
    pooled: dict[str, tuple[list[Sample], float, float]] = {}
    for p in (p for p in phases if p.kind == "revision"):
        config = LoadConfig.load(p.config_path)
        start, end = p.steady_start, max(p.steady_start + 1.0, min(p.end, p.start + config.duration_s))
        inside = window(read_records(Path(p.records)), start, end)
        cpu_s = _cpu_seconds(resources, p.target, start, end)
        segments.append({"name": p.name, "revision": p.target, "round": int(p.name.split("-")[0][3:]),
                         "start": p.start, **_figures(inside, end - start, cpu_s)})
        samples, seconds, cpu = pooled.get(p.target, ([], 0.0, 0.0))
        pooled[p.target] = (samples + inside, seconds + end - start, cpu + cpu_s)
    if not segments:
        return {}
    per = {label: _figures(*pooled[label]) for label in sorted(pooled)}
    ratios: dict[str, Any] = {}
    rounds = sorted({s["round"] for s in segments})
    for key, _, _ in METRICS:
        by_round = []
        for r in rounds:
            pair = {s["revision"]: s[key] for s in segments if s["round"] == r}
            if "A" in pair and "B" in pair:
                by_round.append(_ratio(pair["B"], pair["A"]))
        finite = [x for x in by_round if not math.isnan(x)]
        ratios[key] = {"pooled": _ratio(per.get("B", {}).get(key, math.nan), per.get("A", {}).get(key, math.nan)),
                       "rounds": by_round, "min": min(finite) if finite else math.nan,
                       "max": max(finite) if finite else math.nan}
    return {"revisions": per, "segments": segments, "ratios": ratios}


def _spread(ratio: dict[str, Any]) -> str:
    from perf.report import _fmt

    if all(x is None or math.isnan(x) for x in ratio["rounds"]):
        return "—"
    spread = f"{_fmt(ratio['min'], '', 3)}-{_fmt(ratio['max'], '', 3)}"
    return ", ".join(_fmt(x, "", 3) for x in ratio["rounds"]) + f" ({spread})"


def revision_markdown(data: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    from perf.report import _fmt, _pct, _table

    if not data:
        return []

    def value(key: str, unit: str, x: float) -> str:
        if unit == "%":
            return _pct(x, 2)
        return _fmt(x, unit, 1 if key in ("rps", "cpu_ms_per_request") else 0)

    revs = {r["label"]: r for r in meta.get("revisions", [])}
    lines = ["## Revisions (interleaved, same run)", ""]
    for label, r in revs.items():
        deps = ("its dependencies are satisfied by this venv" if not r["dependency_problems"]
                else "run despite unmet dependencies: " + "; ".join(r["dependency_problems"]))
        lines.append(f"- **{label}** = `{r['spec']}` = {r['sha'][:10]} — {r['subject']} ({deps}; database: "
                     f"{meta.get('databases', {}).get(label, '?')})")
    same = "the same" if meta.get("revisions_same_migrations") else "different"
    lines += ["", f"Migrations: {same} in A and B. Order: {' '.join(meta.get('order', []))} (each round swaps "
              "the order). Each segment is the profile's workload, judged after its warm-up.", ""]
    ratios = data["ratios"]
    per = data["revisions"]
    lines += [_table(["metric", "A", "B", "B / A", "B / A per round (min-max)"],
                     [[label, value(key, unit, per.get("A", {}).get(key, math.nan)),
                       value(key, unit, per.get("B", {}).get(key, math.nan)),
                       _fmt(ratios[key]["pooled"], "x", 3),
                       _spread(ratios[key])] for key, label, unit in METRICS]), ""]
    lines += ["Segments:", "", _table(
        ["segment", "revision", "requests", "req/s", "API p50", "API p95", "API p99", "chat TTFT p95", "errors",
         "CPU / request"],
        [[s["name"], s["revision"], s["count"], _fmt(s["rps"], "", 1), _fmt(s["api_p50_ms"], " ms"),
          _fmt(s["api_p95_ms"], " ms"), _fmt(s["api_p99_ms"], " ms"), _fmt(s["ttft_p95_ms"], " ms"), s["errors"],
          _fmt(s["cpu_ms_per_request"], " ms", 1)] for s in sorted(data["segments"], key=lambda s: s["start"])]), ""]
    cache = meta.get("revision_cache", {})
    if any(cache.values()):
        lines += ["Cache hit rates from /metrics over the segments: " + "; ".join(
            f"{label}: " + ", ".join(f"{k} {_pct(v['hit_rate'])}" for k, v in rates.items())
            for label, rates in cache.items() if rates), ""]
    return lines
