"""`quarry up`: the whole platform on one machine, stopped cleanly by Ctrl-C or SIGTERM.

Order of start: embedded Postgres and Valkey (unless DATABASE_URL / REDIS_URL are set) →
migrations and the app role → the demo tenant (first run only) → the API under Granian,
the arq worker(s), the Dagster webserver and daemon. Every child runs in its own session
(process group), so a terminal's Ctrl-C reaches only this supervisor, which then stops the
children in order — application processes first, then the servers they use — signalling
whole process groups (Granian workers, Dagster code servers) and escalating to SIGKILL, so
nothing is left behind. Stopping takes well under 15 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from api.serving import backpressure
from core.settings import Settings, env_name
from ops.bootstrap import (
    dagster_url,
    embedded_database,
    embedded_pgdata,
    endpoints_file,
    prepare_database,
    with_embedded_secrets,
)
from ops.tenants import DEMO_TENANT, ensure_demo_tenant
from storage.embedded import EmbeddedPostgres, EmbeddedValkey, die_with_parent, free_port, write_private
from storage.urls import redact

__all__ = ["Supervisor"]

_APP_STOP_TIMEOUT_S = 8.0
_MAX_RESTARTS = 5
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Child:
    name: str
    argv: list[str]
    log: Path | None = None  # None: inherit the terminal
    proc: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = with_embedded_secrets(settings)  # the embedded server's app password
        self.data = settings.data_path
        self.stopping = threading.Event()
        self.children: list[Child] = []
        self.postgres: EmbeddedPostgres | None = None
        self.valkey: EmbeddedValkey | None = None

    # --- lifecycle -------------------------------------------------------------------
    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        try:
            env = self._start_infrastructure()
            if self.stopping.is_set():
                return 0
            self._spawn_all(env)
            self._announce()
            return self._watch(env)
        finally:
            self._stop_all()

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self.stopping.is_set():
            self._say(f"received {signal.Signals(signum).name}, stopping…")
        self.stopping.set()

    def _say(self, message: str) -> None:
        print(f"[quarry] {message}", flush=True)

    # --- infrastructure --------------------------------------------------------------
    def _start_infrastructure(self) -> dict[str, str]:
        s = self.settings
        self.data.mkdir(parents=True, exist_ok=True)
        (self.data / "logs").mkdir(exist_ok=True)
        database_url = s.database_url
        if database_url is None:
            self.postgres = EmbeddedPostgres(embedded_pgdata(s), port=54329)
            self.postgres.start()
            database_url = asyncio.run(embedded_database(self.postgres))
            self._say(f"embedded Postgres + pgvector on 127.0.0.1:{self.postgres.port} "
                      f"(data in {self.postgres.pgdata})")
        redis_url = s.redis_url
        if redis_url is None:
            self.valkey = EmbeddedValkey(self.data / "valkey", port=63799)
            self.valkey.start()
            redis_url = self.valkey.url
            self._say(f"embedded Valkey on {redact(redis_url)} (password required, append-only persistence on)")

        applied = asyncio.run(prepare_database(s, database_url))
        self._say(f"migrations: {', '.join(applied) if applied else 'up to date'}")
        key = asyncio.run(ensure_demo_tenant(database_url))
        if key:
            self._say(f"created tenant {DEMO_TENANT!r}. Its admin API key (shown once, store it):")
            print(f"\n    {key}\n", flush=True)
        else:
            self._say(f"tenant {DEMO_TENANT!r} exists; make a key with "
                      f"`quarry keys create --tenant {DEMO_TENANT} --role admin`")

        dagster_home = self.data / "dagster"
        dagster_home.mkdir(exist_ok=True)
        (dagster_home / "dagster.yaml").write_text((REPO_ROOT / "dagster.yaml").read_text())
        env = dict(os.environ)
        env.update({
            env_name("database_url"): database_url,
            env_name("redis_url"): redis_url,
            env_name("data_dir"): str(self.data),
            "QUARRY_DAGSTER_PG_URL": dagster_url(database_url),
            # Empty when unset: the children then derive the app role's URL without a password.
            env_name("app_db_password"): s.app_db_password or "",
            "DAGSTER_HOME": str(dagster_home),
            "PYTHONUNBUFFERED": "1",
            # Prometheus multi-process mode: every API and arq worker writes its metrics here and
            # /metrics sums them. Emptied at each start: values of dead processes must not linger.
            "PROMETHEUS_MULTIPROC_DIR": str(self._fresh_metrics_dir()),
        })
        self._write_endpoints(database_url, redis_url)
        return env

    def _fresh_metrics_dir(self) -> Path:
        path = self.data / "run" / "prometheus"
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
        return path

    def _write_endpoints(self, database_url: str, redis_url: str) -> None:
        path = endpoints_file(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        # 0600 from the start: the URLs carry the servers' passwords.
        write_private(path, json.dumps({
            "pid": os.getpid(), "database_url": database_url, "redis_url": redis_url,
            "app_db_password": self.settings.app_db_password, "api_url": self.api_url,
        }))

    # --- application processes -------------------------------------------------------
    @property
    def api_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    def _plan(self) -> list[Child]:
        s, bin_dir, logs = self.settings, Path(sys.executable).parent, self.data / "logs"
        children = [Child("api", [
            str(bin_dir / "granian"), "--interface", "asgi", "--factory",
            "--host", s.host, "--port", str(s.port), "--workers", str(s.api_workers),
            "--loop", "uvloop", "--respawn-failed-workers",
            # Sized to the DB pool (docs/serving.md); on shutdown in-flight requests get this long.
            "--backpressure", str(backpressure(s)),
            "--workers-kill-timeout", f"{s.api_graceful_timeout_s:g}", "--no-access-log",
            "api.app:app_factory",
        ])]
        children += [Child(f"worker-{i}", [sys.executable, "-m", "ops.cli", "worker"])
                     for i in range(s.arq_workers)]
        if s.dagster:
            dagster_port = free_port(s.dagster_port)
            self.dagster_url = f"http://127.0.0.1:{dagster_port}"
            target = ["-m", "pipelines.definitions"]
            children += [
                Child("dagster-webserver", [str(bin_dir / "dagster-webserver"), "-h", "127.0.0.1",
                                            "-p", str(dagster_port), *target],
                      log=logs / "dagster-webserver.log"),
                Child("dagster-daemon", [str(bin_dir / "dagster-daemon"), "run", *target],
                      log=logs / "dagster-daemon.log"),
            ]
        return children

    def _spawn(self, child: Child, env: dict[str, str]) -> None:
        out = open(child.log, "ab") if child.log else None
        try:
            child.proc = subprocess.Popen(
                child.argv, env=env, cwd=REPO_ROOT, start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGTERM),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT if out else None,
            )
        finally:
            if out:
                out.close()

    def _spawn_all(self, env: dict[str, str]) -> None:
        self.children = self._plan()
        for child in self.children:
            self._spawn(child, env)

    def _announce(self) -> None:
        deadline = time.monotonic() + 60
        while not self.stopping.is_set() and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.api_url}/readyz", timeout=2) as response:  # noqa: S310
                    if response.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.3)
        lines = [f"API          {self.api_url}", f"OpenAPI docs {self.api_url}/docs"]
        if self.settings.dagster:
            lines.append(f"Dagster UI   {self.dagster_url}")
        self._say("platform is up:\n    " + "\n    ".join(lines) + "\n  Ctrl-C stops everything.")

    def _watch(self, env: dict[str, str]) -> int:
        while not self.stopping.wait(0.5):
            for child in self.children:
                assert child.proc is not None
                code = child.proc.poll()
                if code is None:
                    continue
                now = time.monotonic()
                child.restarts = [t for t in child.restarts if now - t < 60] + [now]
                if len(child.restarts) > _MAX_RESTARTS:
                    self._say(f"{child.name} keeps failing (exit {code}); shutting down")
                    return 1
                self._say(f"{child.name} exited with code {code}; restarting")
                self._spawn(child, env)
        return 0

    # --- shutdown --------------------------------------------------------------------
    def _stop_all(self) -> None:
        running = [c.proc for c in self.children if c.proc and c.proc.poll() is None]
        for proc in running:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + max(_APP_STOP_TIMEOUT_S, self.settings.api_graceful_timeout_s + 2)
        for proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in running:  # the group may hold grandchildren even after the leader exits
            _signal_group(proc, signal.SIGKILL)
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        if self.valkey:
            self.valkey.stop(timeout=3)
        if self.postgres:
            self.postgres.stop(timeout=3)
        endpoints_file(self.settings).unlink(missing_ok=True)
        self._say("stopped")


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


