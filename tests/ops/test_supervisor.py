"""`quarry up` end to end: embedded servers, API, worker, Dagster; SIGTERM leaves nothing.

This is the slowest test of the suite (it starts the whole platform twice), and the only
one that starts its own servers: that is what it checks.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from storage.embedded import free_port

REPO = Path(__file__).resolve().parents[2]


def _start(
    data_dir: Path, api_port: int, dagster_port: int, log: Path, extra: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("QUARRY_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update({"QUARRY_DATA_DIR": str(data_dir), "QUARRY_PORT": str(api_port),
                "QUARRY_DAGSTER_PORT": str(dagster_port), "QUARRY_API_WORKERS": "2", **(extra or {})})
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "ops.cli", "up"], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"not ready: {url}\n{log.read_text()[-3000:]}")


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _alive(procs: list[psutil.Process]) -> list[str]:
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(" ".join(p.cmdline())[:120])
        except psutil.NoSuchProcess:
            pass
    return left


def _run_once(data_dir: Path, log: Path, extra: dict[str, str] | None = None) -> str:
    api_port, dagster_port = free_port(), free_port()
    proc = _start(data_dir, api_port, dagster_port, log, extra)
    dagster = (extra or {}).get("QUARRY_DAGSTER") != "false"
    try:
        _wait_ready(f"http://127.0.0.1:{api_port}/readyz", proc, log)
        if dagster:
            _wait_ready(f"http://127.0.0.1:{dagster_port}/server_info", proc, log)
        names = " ".join(" ".join(p.cmdline()) for p in _descendants(proc.pid))
        expected_names = ["postgres", "valkey-server", "granian", "ops.cli worker"]
        if dagster:
            expected_names += ["dagster-webserver", "dagster-daemon"]
        for expected in expected_names:
            assert expected in names, f"{expected} not running under quarry up"
        deadline = time.monotonic() + 30
        while "platform is up" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        text = log.read_text()
        assert f"http://127.0.0.1:{api_port}/docs" in text
        assert not dagster or f"http://127.0.0.1:{dagster_port}" in text
        # The printed key (first run) authenticates; later runs print none.
        keys = re.findall(r"^\s+(qk_\S+)$", text, re.M)
        if keys:
            r = httpx.get(f"http://127.0.0.1:{api_port}/v1/me",
                          headers={"Authorization": f"Bearer {keys[0]}"}, timeout=5)
            assert r.status_code == 200 and r.json()["tenant_name"] == "demo"
        procs = _descendants(proc.pid)
    finally:
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        elapsed = time.monotonic() - started
    assert elapsed < 15, f"shutdown took {elapsed:.1f}s"
    assert proc.returncode == 0, log.read_text()[-3000:]
    time.sleep(0.5)
    assert _alive(procs) == [], "orphans after SIGTERM"
    return log.read_text()


def test_up_starts_everything_and_sigterm_leaves_nothing(tmp_path):
    data = tmp_path / "data"
    first = _run_once(data, tmp_path / "first.log")
    assert "created tenant 'demo'" in first
    assert len(re.findall(r"^\s+qk_\S+$", first, re.M)) == 1

    second = _run_once(data, tmp_path / "second.log")  # same data: no new tenant, no new key
    assert "tenant 'demo' exists" in second
    assert re.findall(r"^\s+qk_\S+$", second, re.M) == []
    assert "migrations: up to date" in second
    # The embedded servers' generated passwords are never printed (URLs are shown masked).
    secrets = [*json.loads((tmp_path / "data" / "postgres.secrets.json").read_text()).values(),
               (data / "valkey" / "password").read_text().strip()]
    assert all(len(secret) >= 32 and secret not in first + second for secret in secrets)
    assert "embedded Valkey on redis://:***@127.0.0.1:" in first


def test_supervisor_killed_with_sigkill_takes_its_children_along(tmp_path):
    """Even SIGKILL (no cleanup possible) leaves nothing: children die with their parent
    (PR_SET_PDEATHSIG), and the next `quarry up` starts cleanly on the same data."""
    log = tmp_path / "up.log"
    api_port = free_port()
    env_extra = {"QUARRY_DAGSTER": "false"}
    proc = _start(tmp_path / "data", api_port, free_port(), log, env_extra)
    try:
        _wait_ready(f"http://127.0.0.1:{api_port}/readyz", proc, log)
        procs = _descendants(proc.pid)
        assert len(procs) >= 4
    finally:
        proc.kill()
        proc.wait(timeout=10)
    deadline = time.monotonic() + 15
    while _alive(procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _alive(procs) == []
    text = _run_once(tmp_path / "data", tmp_path / "again.log", env_extra)
    assert "tenant 'demo' exists" in text
