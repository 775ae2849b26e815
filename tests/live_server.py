"""The API under a real Granian (as `quarry up` runs it), for tests that need real sockets,
real workers and a real event loop per worker: fuzzing, hostile requests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from storage.embedded import free_port

REPO = Path(__file__).resolve().parents[1]


@dataclass
class LiveServer:
    base: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextmanager
def live_api(env_overrides: dict[str, str], log: Path, *, workers: int = 1) -> Iterator[LiveServer]:
    """Granian on a free loopback port with the project's settings from `env_overrides` only (no
    QUARRY_* variable of the caller leaks in); ready when it yields, stopped when it exits."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUARRY_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(env_overrides)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "granian"), "--interface", "asgi", "--factory",
             "--workers", str(workers), "--loop", "uvloop", "--host", "127.0.0.1", "--port", str(port),
             "--no-access-log", "api.app:app_factory"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = LiveServer(f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=server.base, timeout=2) as client:
            while True:
                assert proc.poll() is None, server.output()
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the API did not become ready: " + server.output()
                time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def unhandled_errors(server: LiveServer) -> list[str]:
    """Log lines of unhandled exceptions (JSON logs at level error, or a bare traceback)."""
    lines = server.log.read_text(errors="replace").splitlines()
    return [line for line in lines if "Traceback" in line or '"level": "error"' in line]
