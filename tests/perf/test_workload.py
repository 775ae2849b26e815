"""The load description: Zipf query mix, weights, SSE parsing, record files, config round trip."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from perf.suite.stats import Sample
from perf.suite.workload import LoadConfig, SSEParser, ZipfPicker, parse_weights, read_records, write_record


def test_zipf_picks_follow_the_rank_law() -> None:
    items = [f"q{i}" for i in range(100)]
    picker = ZipfPicker(items, s=1.0, rng=random.Random(1))
    assert sum(picker.probability(r) for r in range(1, 101)) == pytest.approx(1.0)
    assert picker.probability(1) == pytest.approx(2 * picker.probability(2))
    counts = Counter(picker.pick() for _ in range(20_000))
    assert counts["q0"] / 20_000 == pytest.approx(picker.probability(1), rel=0.1)
    assert counts["q0"] > counts["q1"] > counts["q9"]
    # The ideal cache: many repeats among 10k picks of 100 items, none for one pick.
    assert picker.expected_hit_rate(10_000) > 0.98
    assert picker.expected_hit_rate(1) == pytest.approx(0.0)


def test_zipf_zero_exponent_is_uniform_and_empty_is_refused() -> None:
    picker = ZipfPicker(["a", "b", "c", "d"], s=0.0)
    assert picker.probability(1) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        ZipfPicker([])


def test_weights() -> None:
    assert parse_weights("search=85,chat=5, upload=1,browse=9") == {"search": 85, "chat": 5, "upload": 1, "browse": 9}
    assert parse_weights("search,chat=0") == {"search": 1.0}
    with pytest.raises(ValueError):
        parse_weights("fly=3")
    with pytest.raises(ValueError):
        parse_weights("search=0")


def test_sse_parser() -> None:
    lines = ["event: step\n", 'data: {"n": 1}\n', "\n", ": keep-alive\n", "\n",
             "event: token\r\n", "data: hel\r\n", "data: lo\r\n", "\r\n", "data: plain\n"]
    assert list(SSEParser().parse(lines)) == [("step", '{"n": 1}'), ("token", "hel\nlo"), ("message", "plain")]


def test_records_round_trip_and_cut_lines(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    with path.open("w") as out:
        write_record(out, Sample(t=2.5, name="browse, list", ms=12.345, ok=False, status=503, size=10))
        write_record(out, Sample(t=1.0, name="search", ms=3.0, cache="hit"))
        out.write("0.5,search,2.00,1,200,10\n")  # the six-column records of earlier runs
        out.write("3.0,search,1")  # a line cut short by a killed process
    samples = read_records(path)
    assert [s.name for s in samples] == ["search", "search", "browse; list"]  # sorted by time
    assert [s.cache for s in samples] == ["", "hit", ""]
    assert samples[2] == Sample(t=2.5, name="browse; list", ms=12.35, ok=False, status=503, size=10)
    assert read_records(tmp_path / "missing.csv") == []


def test_config_round_trip_and_steps(tmp_path: Path) -> None:
    config = LoadConfig(base_url="http://127.0.0.1:1", records="r.csv", steps=[(10, 30.0), (20, 30.0)],
                        think_s=(0.5, 1.5), stop_on_slo={"api_p95_ms": 500.0})
    config.dump(tmp_path / "c.json")
    loaded = LoadConfig.load(tmp_path / "c.json")
    assert loaded == config
    assert loaded.duration_s == 60.0
    assert [loaded.step_at(t) for t in (0, 29.9, 30, 59.9, 60)] == [0, 0, 1, 1, None]
