"""Revision comparisons (`quarry perf PROFILE --rev A --rev B`): ordering, dependency check,
database digests and copies, the B/A report, and one tiny end-to-end run of two commits of a
temporary clone (no timing thresholds: only that the report has both revisions and ratios)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from perf.report import markdown
from perf.suite.platform import REPO
from perf.suite.revisions import (
    copy_database,
    dependency_problems,
    migrations_id,
    prepare_revisions,
    remove_worktrees,
)
from perf.suite.revreport import revision_comparison, revision_markdown
from perf.suite.revrun import segment_order
from perf.suite.runner import Phase
from perf.suite.stats import LLM_TTFT, USERS, Sample
from perf.suite.workload import LoadConfig, write_record

T0 = 2_000_000.0


def test_segments_alternate_the_order_every_round() -> None:
    assert segment_order(3) == [(0, "A"), (0, "B"), (1, "B"), (1, "A"), (2, "A"), (2, "B")]


def _project(root: Path, deps: list[str], migrations: dict[str, str]) -> Path:
    (root / "storage" / "migrations").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\ndependencies = " + json.dumps(deps) + "\n")
    for name, text in migrations.items():
        (root / "storage" / "migrations" / name).write_text(text)
    return root


def test_dependency_check_against_this_venv(tmp_path: Path) -> None:
    ok = _project(tmp_path / "ok", ["httpx>=0.1", "msgspec", "nothing-here>=1; python_version < '3'"], {})
    assert dependency_problems(ok) == []
    bad = _project(tmp_path / "bad", ["httpx<0.0.1", "surely-not-installed-quarry-pkg>=1", "msgspec"], {})
    problems = dependency_problems(bad)
    assert len(problems) == 2
    assert any("httpx<0.0.1 (installed:" in p for p in problems)
    assert any("not installed" in p for p in problems)


def test_migrations_digest(tmp_path: Path) -> None:
    a = _project(tmp_path / "a", [], {"0001_core.sql": "CREATE TABLE t ();"})
    b = _project(tmp_path / "b", [], {"0001_core.sql": "CREATE TABLE t ();"})
    c = _project(tmp_path / "c", [], {"0001_core.sql": "CREATE TABLE t ();", "0002_more.sql": "SELECT 1;"})
    assert migrations_id(a) == migrations_id(b) != migrations_id(c)


def test_copy_database_refuses_to_overwrite_or_copy_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "postgres").mkdir(parents=True)
    with pytest.raises(SystemExit, match="no Postgres data folder"):
        copy_database(src, tmp_path / "dst")
    (src / "postgres" / "PG_VERSION").write_text("18\n")
    (src / "uploads").mkdir()
    (src / "uploads" / "f.txt").write_text("x")
    copy_database(src, tmp_path / "dst")
    assert (tmp_path / "dst" / "postgres" / "PG_VERSION").read_text() == "18\n"
    assert (tmp_path / "dst" / "uploads" / "f.txt").exists()
    with pytest.raises(SystemExit, match="exists already"):
        copy_database(src, tmp_path / "dst")


def test_prepare_revisions_needs_two(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="exactly two"):
        prepare_revisions(["HEAD"], REPO)


def _segment(tmp: Path, label: str, rnd: int, start: float, rps: int, ms: float) -> Phase:
    name = f"rev{rnd}-{label}"
    config = LoadConfig(base_url="http://x", records=str(tmp / f"{name}.csv"), steps=[(10, 20.0)], spawn_rate=100.0)
    config.dump(tmp / f"{name}.json")
    with open(config.records, "w") as out:
        for i in range(20 * rps):
            write_record(out, Sample(t=start + i / rps, name="search", ms=ms))
        for i in range(20):
            write_record(out, Sample(t=start + i, name=LLM_TTFT, ms=ms * 10))
            write_record(out, Sample(t=start + i, name=USERS, ms=10))
    return Phase(name=name, kind="revision", target=label, scenario="mixed", config_path=str(tmp / f"{name}.json"),
                 records=config.records, start=start, end=start + 20, steady_start=start + 5, exit_code=0)


def test_revision_report_ratios_per_round_and_pooled(tmp_path: Path) -> None:
    # A: 100 req/s at 10 ms; B: 50 req/s at 20 ms in round 1, 25 ms in round 2 (order A B, B A).
    phases = [_segment(tmp_path, "A", 1, T0, 100, 10.0), _segment(tmp_path, "B", 1, T0 + 30, 50, 20.0),
              _segment(tmp_path, "B", 2, T0 + 60, 50, 25.0), _segment(tmp_path, "A", 2, T0 + 90, 100, 10.0)]
    resources = [{"t": T0 + i, "roles": {"A:api": {"cpu": 50.0}, "A:postgres": {"cpu": 50.0},
                                         "B:api": {"cpu": 100.0}, "locust": {"cpu": 90.0}}} for i in range(120)]
    data = revision_comparison(phases, resources)
    assert set(data["revisions"]) == {"A", "B"} and len(data["segments"]) == 4
    r = data["ratios"]
    assert r["rps"]["pooled"] == pytest.approx((50 + 1) / (100 + 1), rel=0.02)  # chat TTFT counts as no request
    assert r["api_p95_ms"]["rounds"] == pytest.approx([2.0, 2.5])
    assert (r["api_p95_ms"]["min"], r["api_p95_ms"]["max"]) == pytest.approx((2.0, 2.5))
    assert r["ttft_p95_ms"]["pooled"] == pytest.approx(2.5)
    # CPU: A's platform 1 core for ~100 req/s, B's 1 core for ~50 req/s -> twice the CPU per request.
    assert r["cpu_ms_per_request"]["pooled"] == pytest.approx(2.0, rel=0.05)
    assert math.isnan(r["error_rate"]["pooled"])  # no errors on either side: no ratio
    meta = {"revisions": [{"label": "A", "spec": "HEAD~1", "sha": "a" * 40, "subject": "old",
                           "dependency_problems": []},
                          {"label": "B", "spec": "HEAD", "sha": "b" * 40, "subject": "new",
                           "dependency_problems": []}], "order": ["A1", "B1", "B2", "A2"]}
    text = "\n".join(revision_markdown(data, meta))
    assert "B / A" in text and "HEAD~1" in text and "2.000, 2.500 (2.000-2.500)" in text
    report = {"meta": {"profile": "smoke", "machine": {"git": "x", "cpus": 2, "python": "3", "loadavg_at_start": []},
                       **meta}, "main": None, "compare": {}, "revisions": data, "notes": []}
    assert "## Revisions (interleaved, same run)" in markdown(report)


def _git(cwd: Path, *argv: str) -> str:
    return subprocess.run(["git", "-c", "user.name=perf-test", "-c", "user.email=perf@test", *argv], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout.strip()


def _clone(tmp_path: Path) -> Path:
    clone = tmp_path / "repo"
    _git(tmp_path, "clone", "--quiet", "--shared", "--no-checkout", str(REPO), str(clone))
    _git(clone, "checkout", "--quiet", "--detach", _git(REPO, "rev-parse", "HEAD"))
    return clone


def test_a_revision_with_unmet_dependencies_is_refused_and_cleaned_up(tmp_path: Path) -> None:
    clone = _clone(tmp_path)
    pyproject = clone / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('dependencies = [', 'dependencies = [\n  "httpx<0.0.1",', 1))
    _git(clone, "commit", "--quiet", "-a", "-m", "an impossible dependency")
    with pytest.raises(SystemExit, match=r"B \(HEAD\): httpx<0.0.1 \(installed: "):
        prepare_revisions(["HEAD~1", "HEAD"], clone)
    assert len(_git(clone, "worktree", "list").splitlines()) == 1
    revisions = prepare_revisions(["HEAD~1", "HEAD"], clone, allow_drift=True)
    try:
        assert [bool(r.dependency_problems) for r in revisions] == [False, True]
        assert all((r.root / "pyproject.toml").exists() for r in revisions)
        assert revisions[0].migrations == revisions[1].migrations == migrations_id(REPO)
    finally:
        remove_worktrees(revisions, clone)
    assert len(_git(clone, "worktree", "list").splitlines()) == 1


@pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="the perf extra (locust) is not installed")
def test_two_commits_of_a_temporary_clone_end_to_end(tmp_path: Path) -> None:
    """Both platforms really run (each from its worktree, B on a copy of A's database), tiny load."""
    clone = _clone(tmp_path)
    # Revision B's API leaves a mark in its data dir when it is imported: proof that each platform
    # runs its own revision's code (the harness itself is this checkout's).
    with open(clone / "api" / "app.py", "a") as f:
        f.write('\n\nimport os as _os  # noqa: E402\n'
                '_os.makedirs(_os.environ["QUARRY_DATA_DIR"], exist_ok=True)\n'
                'open(_os.path.join(_os.environ["QUARRY_DATA_DIR"], "revision-b-was-here"), "w").close()\n')
    _git(clone, "commit", "--quiet", "-a", "-m", "a temporary commit: revision B")
    out = tmp_path / "report"
    argv = [sys.executable, "-m", "perf.run", "smoke", "--rev", "HEAD~1", "--rev", "HEAD", "--rev-repo", str(clone),
            "--users", "2", "--duration", "6", "--rounds", "2", "--chunks", "10", "--keys", "1", "--queries", "50",
            "--out", str(out), "--data-dir", str(tmp_path / "data")]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    revs = {r["label"]: r for r in report["meta"]["revisions"]}
    assert revs["B"]["sha"] == _git(clone, "rev-parse", "HEAD")
    assert revs["A"]["sha"] == _git(clone, "rev-parse", "HEAD~1")
    assert "file copy of A's database" in report["meta"]["databases"]["B"]
    assert report["meta"]["corpus"]["chunks"] == report["meta"]["corpus_b"]["chunks"] > 0
    data = report["revisions"]
    assert set(data["revisions"]) == {"A", "B"} and len(data["segments"]) == 4
    assert data["revisions"]["A"]["count"] > 0 and data["revisions"]["B"]["count"] > 0
    assert data["ratios"]["rps"]["pooled"] is not None and len(data["ratios"]["rps"]["rounds"]) == 2
    assert "## Revisions (interleaved, same run)" in (out / "report.md").read_text()
    # each platform ran its own revision's code, and the worktrees are gone
    data_dirs = {d.name[0]: d for d in (tmp_path / "data").iterdir()}
    assert (data_dirs["B"] / "revision-b-was-here").exists()
    assert not (data_dirs["A"] / "revision-b-was-here").exists()
    assert len(_git(clone, "worktree", "list").splitlines()) == 1
