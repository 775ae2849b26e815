"""The perf suite's statistics: percentiles, windows, SLO verdicts, drift (no server, no Locust)."""

from __future__ import annotations

import math

import pytest

from perf.suite.stats import (
    SLO,
    USERS,
    Sample,
    by_class,
    classify,
    drift,
    linear_fit,
    max_users,
    percentile,
    summarize,
    timeline,
    verdict,
    window,
)


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 95) == 7.0
    assert percentile([3, 1, 2], 50) == 2  # unsorted input
    assert math.isnan(percentile([], 95))


def test_classes_of_request_names() -> None:
    assert classify("search") == "api"
    assert classify("browse list") == "api"
    assert classify("upload") == "api"
    assert classify("chat ttft") == "llm"
    assert classify("chat total") == "llm_info"
    assert classify("chat open") == "llm_info"
    assert classify(USERS) == "users"


def test_summary_counts_rps_errors_and_ignores_user_samples() -> None:
    samples = [Sample(t=i * 0.1, name="search", ms=10.0 + i, ok=i % 10 != 0) for i in range(100)]
    samples += [Sample(t=0.0, name=USERS, ms=50)]
    # A chat is one HTTP request; its TTFT and total are measurements of it, not requests.
    samples += [Sample(t=1.0, name="chat open", ms=5), Sample(t=1.0, name="chat ttft", ms=700),
                Sample(t=1.0, name="chat total", ms=1500)]
    out = summarize(samples, duration_s=10.0)
    assert out["count"] == 103
    assert out["errors"] == 10
    assert out["rps"] == pytest.approx(10.1)
    assert max_users(samples) == 50
    classes = by_class(samples, 10.0)
    assert set(classes) == {"api", "llm", "llm_info"}
    assert classes["llm"]["p95_ms"] == 700


def test_window_is_half_open() -> None:
    samples = [Sample(t=float(t), name="search", ms=1.0) for t in range(10)]
    assert [s.t for s in window(samples, 2.0, 5.0)] == [2.0, 3.0, 4.0]


def test_timeline_buckets() -> None:
    samples = [Sample(t=100 + i * 0.5, name="search", ms=float(i)) for i in range(40)]  # 20 s at 2 rps
    samples += [Sample(t=100 + i, name=USERS, ms=7) for i in range(20)]
    rows = timeline(samples, 100.0, 120.0, bucket_s=5.0)
    assert len(rows) == 4
    assert all(r["rps"] == pytest.approx(2.0) for r in rows)
    assert rows[0]["api_p95_ms"] == 9.0  # ms 0..9 in the first bucket
    assert rows[0]["users"] == 7
    assert math.isnan(rows[0]["llm_p95_ms"])


def test_verdict_breaks_on_latency_errors_and_ttft() -> None:
    fast = [Sample(t=0, name="search", ms=100.0) for _ in range(100)]
    assert not verdict(fast, SLO()).broken
    slow = [Sample(t=0, name="search", ms=100.0) for _ in range(90)] + [
        Sample(t=0, name="search", ms=900.0) for _ in range(10)]
    v = verdict(slow, SLO())
    assert v.broken and "API p95" in v.reasons[0]
    failing = [*fast, Sample(t=0, name="search", ms=10.0, ok=False)]
    v = verdict(failing, SLO(error_rate=0.001))
    assert v.broken and "error rate" in v.reasons[0]
    chats = fast + [Sample(t=0, name="chat ttft", ms=2500.0) for _ in range(5)]
    v = verdict(chats, SLO())
    assert v.broken and "TTFT" in v.reasons[0]
    # Too few requests to judge: never broken.
    assert not verdict([Sample(t=0, name="search", ms=5000.0)], SLO()).broken


def test_linear_fit_and_drift() -> None:
    xs = [float(i) for i in range(100)]
    slope, intercept, r2 = linear_fit(xs, [2 * x + 1 for x in xs])
    assert slope == pytest.approx(2.0)
    assert intercept == pytest.approx(1.0)
    assert r2 == pytest.approx(1.0)
    assert linear_fit([1.0], [5.0]) == (0.0, 5.0, 0.0)
    # A leak: +1 MB per second from 100 MB.
    d = drift(xs, [100 + x for x in xs])
    assert d["slope_per_min"] == pytest.approx(60.0)
    assert d["growth"] > 0.3
    flat = drift(xs, [100.0] * 100)
    assert flat["growth"] == 0.0 and flat["slope_per_min"] == 0.0
    assert math.isnan(drift([1.0, 2.0], [1.0, 2.0])["growth"])  # too few points


def test_cache_share_of_x_cache_headers() -> None:
    from perf.suite.stats import cache_share

    samples = [Sample(t=0, name="search", ms=1, cache="hit")] * 3 + [Sample(t=0, name="search", ms=1, cache="miss")]
    samples += [Sample(t=0, name="browse list", ms=1)]
    assert cache_share(samples) == {"hits": 3, "misses": 1, "hit_rate": 0.75}
    assert math.isnan(cache_share([])["hit_rate"])
