"""The processes a perf run starts and stops: `quarry up` (the platform on the embedded default),
a second API server with other settings (comparisons), the bare ceiling and the simulated LLM.

Everything listens on 127.0.0.1 only. Each child runs in its own session and is stopped by
process group (SIGTERM, then SIGKILL), so a perf run leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage.embedded import free_port

__all__ = ["REPO", "Platform", "Server", "create_perf_keys", "http_ok", "wait_http"]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def log(message: str) -> None:
    print(f"[perf {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback only
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_ok(url):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what or url} exited with code {proc.returncode} before it answered")
        time.sleep(0.3)
    raise TimeoutError(f"{what or url} did not answer within {timeout:.0f} s")


def _stop_group(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # grandchildren may outlive the leader
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def granian_backpressure(env: dict[str, str]) -> list[str]:
    """`--backpressure N` as `quarry up` computes it from these settings (when it does)."""
    try:
        from api.serving import backpressure
        from core.settings import load_settings
    except ImportError:
        return []
    return ["--backpressure", str(backpressure(load_settings(environ=env, dotenv=None)))]


def _spawn(argv: list[str], env: dict[str, str], log_path: Path, cwd: Path = REPO) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as out:
        return subprocess.Popen(argv, env=env, cwd=cwd, start_new_session=True, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)


def base_env(root: Path = REPO, **extra: str) -> dict[str, str]:
    """This environment with `root` first on PYTHONPATH: its packages win over the editable
    install's (a revision's worktree runs its own code on this venv)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Platform:
    """`quarry up` on `data_dir`, Dagster off, on a free port, with `overrides` as env."""

    data_dir: Path
    log_path: Path
    overrides: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    endpoints: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    root: Path = REPO
    """The source tree `quarry up` runs from (a revision's worktree in revision comparisons)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 240.0) -> None:
        self.port = self.port or free_port()
        self.env = base_env(self.root, QUARRY_DATA_DIR=str(self.data_dir), QUARRY_PORT=str(self.port),
                            QUARRY_HOST="127.0.0.1", QUARRY_DAGSTER="false", **self.overrides)
        for name in ("DATABASE_URL", "REDIS_URL"):  # the embedded default, always
            self.env.pop(name, None)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log(f"starting the platform: quarry up (data {self.data_dir}, port {self.port}); log {self.log_path}")
        self.proc = _spawn([sys.executable, "-m", "ops.cli", "up"], self.env, self.log_path, self.root)
        endpoints = self.data_dir.resolve() / "run" / "endpoints.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"quarry up exited with code {self.proc.returncode}; see {self.log_path}")
            try:
                data = json.loads(endpoints.read_text())
                if int(data["pid"]) == self.proc.pid and http_ok(f"{self.url}/readyz"):
                    self.endpoints = data
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the platform was not ready within {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None:
            log("stopping the platform")
            _stop_group(self.proc, timeout=30)

    def child_env(self, **overrides: str) -> dict[str, str]:
        """The environment the supervisor gives its API workers, plus `overrides`."""
        env = dict(self.env)
        env.update({"DATABASE_URL": self.endpoints["database_url"], "REDIS_URL": self.endpoints["redis_url"],
                    "QUARRY_APP_DB_PASSWORD": self.endpoints.get("app_db_password") or ""})
        env.update(overrides)
        return env


@dataclass
class Server:
    """One more HTTP server: a second Quarry API (other settings) or the ceiling, or the sim LLM."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    health: str = "/healthz"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def granian(cls, name: str, target: str, workers: int, env: dict[str, str], log_path: Path,
                health: str = "/healthz") -> Server:
        """Granian with the options `quarry up` uses for the API (uvloop, no access log, the
        backpressure the settings in `env` give), so a comparison differs only in its settings."""
        port = free_port()
        argv = [str(BIN / "granian"), "--interface", "asgi", "--factory", "--host", "127.0.0.1",
                "--port", str(port), "--workers", str(workers), "--loop", "uvloop", "--no-access-log",
                "--workers-kill-timeout", "6", *granian_backpressure(env), target]
        return cls(name, argv, env, port, log_path, health)

    @classmethod
    def simllm(cls, env: dict[str, str], log_path: Path, ttft_ms: float, tokens_per_s: float, tokens: int) -> Server:
        port = free_port()
        argv = [sys.executable, "-m", "perf.suite.llm", "--port", str(port), "--ttft-ms", str(ttft_ms),
                "--tokens-per-s", str(tokens_per_s), "--tokens", str(tokens)]
        return cls("simllm", argv, env, port, log_path, "/v1/models")

    def start(self, timeout: float = 90.0) -> Server:
        log(f"starting {self.name} on {self.url}")
        self.proc = _spawn(self.argv, self.env, self.log_path)
        wait_http(self.url + self.health, timeout, self.proc, self.name)
        return self

    def stop(self) -> None:
        _stop_group(self.proc, timeout=10)


async def _create_keys(admin_url: str, tenant: str, n: int) -> list[str]:
    from ops import tenants as ops_tenants
    from storage.repositories import tenants as tenant_repo

    pool = await ops_tenants._pool(admin_url)
    try:
        async with pool.acquire() as conn:
            exists = await tenant_repo.get_tenant_by_name(conn, tenant) is not None
    finally:
        await pool.close()
    if not exists:
        await ops_tenants.create_tenant(admin_url, tenant)
    keys = []
    for i in range(n):
        key, _ = await ops_tenants.create_key(admin_url, tenant, "admin", name=f"perf {i}")
        keys.append(key)
    return keys


def create_perf_keys(admin_url: str, tenant: str, n: int) -> list[str]:
    """`n` fresh admin keys of `tenant` (created if missing): one per group of simulated users."""
    return asyncio.run(_create_keys(admin_url, tenant, n))


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
