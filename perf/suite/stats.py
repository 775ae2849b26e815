"""Pure statistics of a load run: percentiles, windows, SLO verdicts, drift. No I/O, no Locust.

A run is a list of `Sample`s, one per request (or per measured event such as a chat's time to
first token), as the locustfiles record them (perf/locust/_quarry.py writes them as CSV).
Request names map to classes: `api` (search, upload, browse: the "< 500 ms" target),
`llm` (chat time to first token: the "< 2 s" target) and `llm_info` (the rest of a chat:
time to headers and the whole answer, reported but not judged).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SLO", "Sample", "Verdict", "cache_share", "classify", "drift", "linear_fit", "percentile", "summarize", "timeline",
    "verdict", "window",
]

USERS = "__users__"
"""Pseudo request name of the user-count samples (ms holds the number of running users)."""

LLM_TTFT = "chat ttft"
LLM_TOTAL = "chat total"
LLM_OPEN = "chat open"


@dataclass(frozen=True)
class Sample:
    t: float
    """When the request started (Unix seconds)."""
    name: str
    ms: float
    ok: bool = True
    status: int = 0
    size: int = 0
    cache: str = ""
    """The response's X-Cache header (search: `hit` or `miss`), empty when absent."""


def classify(name: str) -> str:
    if name == USERS:
        return "users"
    if name == LLM_TTFT:
        return "llm"
    if name.startswith("chat"):
        return "llm_info"
    return "api"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted `values`; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def window(samples: Iterable[Sample], start: float, end: float) -> list[Sample]:
    """Samples that started in [start, end)."""
    return [s for s in samples if start <= s.t < end]


def _requests(samples: Iterable[Sample]) -> list[Sample]:
    return [s for s in samples if s.name != USERS]


def summarize(samples: Sequence[Sample], duration_s: float) -> dict[str, Any]:
    """Count, requests/s, error rate and latency percentiles (ms) of measured requests."""
    reqs = _requests(samples)
    times = [s.ms for s in reqs]
    errors = sum(1 for s in reqs if not s.ok)
    # Requests/s counts HTTP requests: a chat's TTFT and total are measurements of one request.
    http = [s for s in reqs if s.name not in (LLM_TTFT, LLM_TOTAL)]
    out: dict[str, Any] = {
        "count": len(reqs), "errors": errors, "error_rate": errors / len(reqs) if reqs else 0.0,
        "rps": len(http) / duration_s if duration_s > 0 else 0.0,
    }
    for q in (50, 95, 99):
        out[f"p{q}_ms"] = percentile(times, q)
    out["mean_ms"] = statistics.fmean(times) if times else math.nan
    out["max_ms"] = max(times) if times else math.nan
    return out


def by_name(samples: Sequence[Sample], duration_s: float) -> dict[str, dict[str, Any]]:
    names = sorted({s.name for s in samples if s.name != USERS})
    return {n: summarize([s for s in samples if s.name == n], duration_s) for n in names}


def by_class(samples: Sequence[Sample], duration_s: float) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[Sample]] = {}
    for s in _requests(samples):
        groups.setdefault(classify(s.name), []).append(s)
    return {k: summarize(v, duration_s) for k, v in sorted(groups.items())}


def cache_share(samples: Iterable[Sample]) -> dict[str, float]:
    """Hits, misses and hit rate of the responses that carried an X-Cache header."""
    hits = misses = 0
    for s in samples:
        if s.cache == "hit":
            hits += 1
        elif s.cache == "miss":
            misses += 1
    total = hits + misses
    return {"hits": hits, "misses": misses, "hit_rate": hits / total if total else math.nan}


def max_users(samples: Iterable[Sample]) -> int:
    return int(max((s.ms for s in samples if s.name == USERS), default=0))


def timeline(samples: Sequence[Sample], start: float, end: float, bucket_s: float = 5.0) -> list[dict[str, Any]]:
    """Per bucket: start offset, requests/s, errors/s, p50/p95/p99 of api and llm, users."""
    n = max(1, math.ceil((end - start) / bucket_s))
    buckets: list[list[Sample]] = [[] for _ in range(n)]
    for s in samples:
        i = int((s.t - start) // bucket_s)
        if 0 <= i < n:
            buckets[i].append(s)
    rows = []
    for i, bucket in enumerate(buckets):
        width = min(bucket_s, end - (start + i * bucket_s))
        if width <= 0:
            continue
        api = [s.ms for s in bucket if classify(s.name) == "api"]
        llm = [s.ms for s in bucket if classify(s.name) == "llm"]
        http = [s for s in bucket if classify(s.name) in ("api", "llm_info") and s.name != LLM_TOTAL]
        users = [s.ms for s in bucket if s.name == USERS]
        rows.append({
            "t": round(i * bucket_s, 3), "rps": len(http) / width,
            "errors_per_s": sum(1 for s in bucket if s.name != USERS and not s.ok) / width,
            "api_p50_ms": percentile(api, 50), "api_p95_ms": percentile(api, 95), "api_p99_ms": percentile(api, 99),
            "llm_p95_ms": percentile(llm, 95), "users": max(users) if users else None,
        })
    return rows


@dataclass(frozen=True)
class SLO:
    api_p95_ms: float = 500.0
    llm_p95_ms: float = 2000.0
    error_rate: float = 0.001


@dataclass
class Verdict:
    broken: bool
    reasons: list[str] = field(default_factory=list)
    api_p95_ms: float = math.nan
    llm_p95_ms: float = math.nan
    error_rate: float = 0.0
    count: int = 0


def verdict(samples: Sequence[Sample], slo: SLO, min_requests: int = 20) -> Verdict:
    """Whether these samples (one stress step) keep the SLO; too few requests never break it."""
    reqs = _requests(samples)
    api = [s.ms for s in reqs if classify(s.name) == "api"]
    llm = [s.ms for s in reqs if classify(s.name) == "llm"]
    errors = sum(1 for s in reqs if not s.ok)
    v = Verdict(broken=False, api_p95_ms=percentile(api, 95), llm_p95_ms=percentile(llm, 95),
                error_rate=errors / len(reqs) if reqs else 0.0, count=len(reqs))
    if len(reqs) < min_requests:
        return v
    if api and v.api_p95_ms > slo.api_p95_ms:
        v.reasons.append(f"API p95 {v.api_p95_ms:.0f} ms > {slo.api_p95_ms:.0f} ms")
    if llm and v.llm_p95_ms > slo.llm_p95_ms:
        v.reasons.append(f"LLM TTFT p95 {v.llm_p95_ms:.0f} ms > {slo.llm_p95_ms:.0f} ms")
    if v.error_rate > slo.error_rate:
        v.reasons.append(f"error rate {v.error_rate:.2%} > {slo.error_rate:.2%}")
    v.broken = bool(v.reasons)
    return v


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares slope, intercept and R² of ys over xs (slope 0 and R² 0 when degenerate)."""
    n = len(xs)
    if n < 2:
        return 0.0, (ys[0] if ys else 0.0), 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0:
        return 0.0, my, 0.0
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    r2 = (sxy * sxy) / (sxx * syy) if syy > 0 else 0.0
    return slope, my - slope * mx, r2


def drift(ts: Sequence[float], values: Sequence[float], warmup_fraction: float = 0.2) -> dict[str, Any]:
    """How a series moves over a steady run: the first `warmup_fraction` is dropped, then the
    median of the first and last fifth of the rest are compared, and a line is fitted.
    `growth` is (last - first) / first; `slope_per_min` is in the series' unit per minute."""
    pairs = [(t, v) for t, v in zip(ts, values, strict=True) if v is not None and not math.isnan(v)]
    if len(pairs) < 10:
        return {"n": len(pairs), "first": math.nan, "last": math.nan, "growth": math.nan,
                "slope_per_min": math.nan, "r2": math.nan}
    pairs = pairs[int(len(pairs) * warmup_fraction):]
    fifth = max(1, len(pairs) // 5)
    first = statistics.median(v for _, v in pairs[:fifth])
    last = statistics.median(v for _, v in pairs[-fifth:])
    slope, _, r2 = linear_fit([t for t, _ in pairs], [v for _, v in pairs])
    return {"n": len(pairs), "first": first, "last": last,
            "growth": (last - first) / first if first else math.nan,
            "slope_per_min": slope * 60, "r2": r2}
