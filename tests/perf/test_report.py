"""The perf report: targets table, comparisons, /metrics parsing, files written (fake run data)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from perf.report import compare, targets, write_report
from perf.suite.runner import Phase
from perf.suite.sampler import cache_hit_rates, parse_prometheus, role_of
from perf.suite.stats import USERS, Sample
from perf.suite.workload import LoadConfig, write_record

T0 = 1_000_000.0


def _phase(tmp: Path, name: str, kind: str, target: str, samples: list[Sample], steps: list[tuple[int, float]],
           start: float, verdicts: list[dict[str, object]] | None = None) -> Phase:
    config = LoadConfig(base_url="http://x", records=str(tmp / f"{name}.csv"), steps=steps, spawn_rate=100.0)
    config.dump(tmp / f"{name}.json")
    with open(config.records, "w") as out:
        for s in samples:
            write_record(out, s)
    return Phase(name=name, kind=kind, target=target, scenario="search", config_path=str(tmp / f"{name}.json"),
                 records=config.records, start=start, end=start + config.duration_s, steady_start=start + 5,
                 exit_code=0, verdicts=verdicts or [])


def _traffic(start: float, seconds: int, rps: int, ms: float, users: int, errors_every: int = 0) -> list[Sample]:
    out = []
    for i in range(seconds * rps):
        out.append(Sample(t=start + i / rps, name="search", ms=ms, ok=not (errors_every and i % errors_every == 0)))
    out += [Sample(t=start + i, name=USERS, ms=users) for i in range(seconds)]
    return out


def _resources(start: float, seconds: int, rss_growth_per_s: float = 0.0) -> list[dict[str, object]]:
    return [{"t": start + i, "roles": {"api": {"cpu": 50.0, "rss_mb": 500 + rss_growth_per_s * i, "procs": 3},
                                       "locust": {"cpu": 20.0, "rss_mb": 50.0, "procs": 1}},
             "machine_cpu": 60.0, "other_cpu": 10.0, "db_connections": 12, "redis_used_memory_mb": 2.0}
            for i in range(seconds)]


METRICS_BEFORE = """# HELP quarry_cache_hits_total hits
quarry_cache_hits_total{cache="search"} 10
quarry_cache_misses_total{cache="search"} 10
quarry_cache_requests_total{cache="embedding",result="hit"} 0
quarry_cache_requests_total{cache="embedding",result="miss"} 0
"""
METRICS_AFTER = """quarry_cache_hits_total{cache="search"} 810
quarry_cache_misses_total{cache="search"} 210
quarry_cache_requests_total{cache="embedding",result="hit"} 30
quarry_cache_requests_total{cache="embedding",result="miss"} 70
quarry_http_requests_total{route="/v1/search"} 5
"""


def test_prometheus_parsing_and_cache_hit_rates() -> None:
    series = parse_prometheus(METRICS_AFTER + "garbage line\n# comment\n")
    assert series[("quarry_cache_hits_total", (("cache", "search"),))] == 810
    rates = cache_hit_rates(METRICS_BEFORE, METRICS_AFTER)
    assert rates["search"]["hit_rate"] == pytest.approx(800 / 1000)
    assert rates["embedding"]["hit_rate"] == pytest.approx(0.3)
    assert cache_hit_rates(None, None) == {}
    assert cache_hit_rates(None, "quarry_http_requests_total 3\n") == {}


def test_roles_of_platform_processes() -> None:
    assert role_of(["/v/bin/granian", "--interface", "asgi"], "granian") == "api"
    assert role_of(["/v/bin/python", "-m", "ops.cli", "worker"], "python") == "arq"
    assert role_of(["postgres: quarry_app quarry [local] idle"], "postgres") == "postgres"
    assert role_of(["/x/valkey-server", "/d/valkey.conf"], "valkey-server") == "valkey"
    assert role_of(["/v/bin/python", "-m", "ops.cli", "up"], "python") == "supervisor"


def test_load_run_targets_and_report_files(tmp_path: Path) -> None:
    samples = _traffic(T0, 60, rps=150, ms=40.0, users=250, errors_every=2000)
    samples += [Sample(t=T0 + 10 + i, name="chat ttft", ms=800.0) for i in range(40)]
    main = _phase(tmp_path, "main", "main", "platform", samples, [(250, 60.0)], T0)
    main.metrics_before, main.metrics_after = METRICS_BEFORE, METRICS_AFTER
    cmp = [
        _phase(tmp_path, "cmp1-platform", "compare", "platform", _traffic(T0 + 100, 10, 400, 20.0, 32), [(32, 10.0)],
               T0 + 100),
        _phase(tmp_path, "cmp1-compare", "compare", "compare", _traffic(T0 + 110, 10, 200, 40.0, 32), [(32, 10.0)],
               T0 + 110),
        _phase(tmp_path, "cmp1-ceiling", "compare", "ceiling", _traffic(T0 + 120, 10, 1600, 5.0, 32), [(32, 10.0)],
               T0 + 120),
    ]
    meta = {"profile": "load-250", "machine": {"git": "abc", "cpus": 2, "python": "3.11", "loadavg_at_start": [1]},
            "llm": {"chat_available": True}, "compare": {"label": "QUARRY_API_WORKERS=1"}, "started": T0 - 10}
    result = write_report(tmp_path, meta, [main, *cmp], _resources(T0 - 10, 140), ["a note"])
    report = json.loads(Path(result["json"]).read_text())
    rows = {r["target"]: r for r in report["targets"]}
    assert rows["200-500 concurrent users"]["status"] == "PASS"
    assert rows["p95 < 500 ms (API calls)"]["status"] == "PASS"
    assert rows["p95 < 2 s (LLM calls)"]["status"] == "PASS"
    assert rows["100-200 requests/s"]["status"] == "PASS"
    assert rows["cache hit rate > 70 %"]["measured"].startswith("80.0 %")
    assert rows["error rate < 0.1 %"]["status"] == "PASS"  # 1 in 2000
    assert rows["no memory leak"]["status"] == "n/a"  # a 1-minute window is too short to judge
    assert rows["no pool instability"]["status"] == "PASS"
    ratios = report["compare"]["ratios"]
    assert ratios["platform_vs_ceiling_rps"] == pytest.approx(0.25, rel=0.02)
    assert ratios["platform_vs_compare_rps"] == pytest.approx(2.0, rel=0.02)
    text = Path(result["markdown"]).read_text()
    assert "25.0 % of the HTTP ceiling" in text
    assert "a note" in text
    assert (tmp_path / "resources.json").exists()


def test_stress_run_reports_the_breaking_point(tmp_path: Path) -> None:
    samples = _traffic(T0, 30, 50, 50.0, 50) + _traffic(T0 + 30, 30, 100, 900.0, 100)
    verdicts = [
        {"step": 0, "users": 50, "start": T0, "end": T0 + 30, "broken": False, "reasons": [], "api_p95_ms": 50.0,
         "llm_p95_ms": None, "error_rate": 0.0, "count": 1250},
        {"step": 1, "users": 100, "start": T0 + 30, "end": T0 + 60, "broken": True,
         "reasons": ["API p95 900 ms > 500 ms"], "api_p95_ms": 900.0, "llm_p95_ms": None, "error_rate": 0.0,
         "count": 2500},
    ]
    main = _phase(tmp_path, "main", "main", "platform", samples, [(50, 30.0), (100, 30.0), (200, 30.0)], T0,
                  verdicts)
    meta = {"profile": "stress", "machine": {"git": "abc", "cpus": 2, "python": "3.11", "loadavg_at_start": [1]}}
    result = write_report(tmp_path, meta, [main], _resources(T0, 60), [])
    report = json.loads(Path(result["json"]).read_text())
    assert report["main"]["breaking_point"] == {"users": 100, "reasons": ["API p95 900 ms > 500 ms"]}
    # Targets are judged on the last step that kept the SLO.
    assert report["main"]["judged"]["p95_ms"] == 50.0
    assert "Breaking point: 100 users" in result["markdown_text"]
    assert compare([main]) == {"targets": {}, "rounds": {}, "ratios": {}}


def test_leak_is_judged_on_long_windows(tmp_path: Path) -> None:
    main = _phase(tmp_path, "main", "main", "platform", _traffic(T0, 600, 5, 30.0, 20), [(20, 600.0)], T0)
    meta = {"profile": "endurance", "machine": {"git": "abc", "cpus": 2, "python": "3.11", "loadavg_at_start": [1]}}
    report = json.loads(Path(write_report(tmp_path, meta, [main], _resources(T0, 600, rss_growth_per_s=0.5),
                                          [])["json"]).read_text())
    rows = {r["target"]: r for r in report["targets"]}
    assert rows["no memory leak"]["status"] == "FAIL"  # +0.5 MB/s on 500 MB
    assert report["main"]["drift"]["api_rss_mb"]["slope_per_min"] == pytest.approx(30.0, rel=0.01)


def test_targets_without_chat_or_metrics() -> None:
    main = {"judged": {"rps": 50.0, "error_rate": 0.0, "errors": 0, "count": 100},
            "classes": {"api": {"p95_ms": 700.0}}, "names": {}, "users": 100, "cache": {},
            "resources": {}, "drift": {}, "duration_s": 60.0}
    rows = {r["target"]: r for r in targets(main, llm_available=False)}
    assert rows["p95 < 500 ms (API calls)"]["status"] == "FAIL"
    assert rows["p95 < 2 s (LLM calls)"]["status"] == "n/a"
    assert rows["cache hit rate > 70 %"]["status"] == "n/a"
    assert rows["100-200 requests/s"]["status"] == "below"
    assert rows["200-500 concurrent users"]["status"] == "below"
    assert math.isnan(float("nan"))


def test_cache_target_from_x_cache_headers_without_metrics() -> None:
    main = {"judged": {"rps": 150.0, "error_rate": 0.0, "errors": 0, "count": 100},
            "classes": {"api": {"p95_ms": 70.0}}, "names": {}, "users": 200, "cache": {},
            "x_cache": {"hits": 90, "misses": 10, "hit_rate": 0.9}, "resources": {}, "drift": {}, "duration_s": 60.0}
    rows = {r["target"]: r for r in targets(main, llm_available=False)}
    assert rows["cache hit rate > 70 %"]["status"] == "PASS"
    assert rows["cache hit rate > 70 %"]["measured"].startswith("90.0 %")


def test_stress_steps_are_judged_again_with_late_requests(tmp_path: Path) -> None:
    # Online, the step looked fine (its slow requests had not finished); the report counts them.
    samples = _traffic(T0, 30, 10, 50.0, 50) + [Sample(t=T0 + 10 + i * 0.1, name="search", ms=20_000.0)
                                                for i in range(60)]
    verdicts = [{"step": 0, "users": 50, "start": T0, "end": T0 + 30, "broken": False, "reasons": [],
                 "api_p95_ms": 50.0, "llm_p95_ms": None, "error_rate": 0.0, "count": 250}]
    config = LoadConfig(base_url="http://x", records=str(tmp_path / "m.csv"), steps=[(50, 30.0)],
                        stop_on_slo={"api_p95_ms": 500.0, "llm_p95_ms": 2000.0, "error_rate": 0.001})
    config.dump(tmp_path / "m.json")
    with open(config.records, "w") as out:
        for s in samples:
            write_record(out, s)
    main = Phase(name="main", kind="main", target="platform", scenario="mixed", config_path=str(tmp_path / "m.json"),
                 records=config.records, start=T0, end=T0 + 30, steady_start=T0 + 5, exit_code=0, verdicts=verdicts)
    from perf.report import analyze

    result = analyze(main, [])
    assert result["steps"][0]["broken"] and not result["steps"][0]["online_broken"]
    assert result["breaking_point"]["users"] == 50
