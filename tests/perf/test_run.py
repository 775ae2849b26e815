"""`quarry perf` argument handling: profiles, overrides, the naive configuration, settings."""

from __future__ import annotations

import pytest

from core.settings import Settings
from perf.run import _naive, _pairs, _profile, _settings_overrides, parser
from perf.suite.profiles import PROFILES


def _args(*argv: str) -> object:
    return parser().parse_args(list(argv))


def test_profiles_and_overrides() -> None:
    assert {"smoke", "load-100", "load-200", "load-500", "stress", "endurance"} <= set(PROFILES)
    assert _profile(_args("load-200")).steps == [(200, 120.0)]
    assert _profile(_args("load-200", "--warmup", "10")).warmup_s == 10.0
    p = _profile(_args("load-200", "--users", "50", "--duration", "30", "--think", "0,0.5", "--no-compare"))
    assert p.steps == [(50, 30.0)] and p.think_s == (0.0, 0.5) and not p.compare
    stress = _profile(_args("stress", "--duration", "10"))
    assert stress.stress and all(d == 10.0 for _, d in stress.steps)
    assert _profile(_args("stress", "--steps", "10:5,20:5")).steps == [(10, 5.0), (20, 5.0)]
    assert _profile(_args("smoke", "--weights", "search=1,chat=1")).weights == {"search": 1.0, "chat": 1.0}
    assert _profile(_args("stress", "--with-compare")).compare


def test_pairs() -> None:
    assert _pairs("A=1, B=x,") == {"A": "1", "B": "x"}
    with pytest.raises(SystemExit):
        _pairs("A")


def test_naive_configuration_and_platform_settings() -> None:
    fields = set(Settings.__struct_fields__)
    naive = _pairs(_naive(fields))
    assert naive["QUARRY_API_WORKERS"] == "1"
    env = _settings_overrides(fields, "http://127.0.0.1:9")
    assert env["QUARRY_LLM_BASE_URL"] == "http://127.0.0.1:9/v1"
    if "rate_limits" in fields:
        assert "search=1000000/1000000" in env["QUARRY_RATE_LIMITS"]
    assert _settings_overrides(set(), None) == {}


def test_revision_and_corpus_options() -> None:
    args = parser().parse_args(["load-200", "--rev", "HEAD~1", "--rev", ".", "--rounds", "3",
                                "--corpus-from", ".data/perf-search", "--allow-dependency-drift"])
    assert args.rev == ["HEAD~1", "."] and args.rounds == 3 and args.allow_dependency_drift
    assert str(args.corpus_from) == ".data/perf-search"
    assert parser().parse_args(["smoke"]).rev == []
