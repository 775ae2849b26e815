"""/metrics under Granian with two worker processes: every scrape, whichever worker answers it,
counts the requests of both (prometheus_client multiprocess mode)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from storage.embedded import free_port

REPO = Path(__file__).resolve().parents[2]


def healthz_count(text: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "quarry_http_requests_total" and s.labels.get("route") == "/healthz":
                return s.value
    return 0.0


def test_metrics_aggregate_every_granian_worker(settings, tmp_path):
    port = free_port()
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUARRY_")}
    env.update({"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
                "QUARRY_APP_DB_PASSWORD": settings.app_db_password or "",
                "QUARRY_DATA_DIR": settings.data_dir, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
                "QUARRY_API_WORKERS": "2", "QUARRY_LOG_LEVEL": "warning"})
    log = tmp_path / "granian.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "granian"), "--interface", "asgi", "--factory", "--workers", "2",
             "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "api.app:app_factory"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        for _ in range(60):  # a new connection each time, so both workers take some
            with httpx.Client(base_url=base, headers={"Connection": "close"}) as client:
                assert client.get("/healthz").status_code == 200
        for _ in range(6):
            with httpx.Client(base_url=base, headers={"Connection": "close"}) as client:
                r = client.get("/metrics")
            assert r.status_code == 200
            assert healthz_count(r.text) == 60, r.text[:2000]  # both workers' requests, every time
        # Both workers served /healthz (each wrote request counters), so no single worker's own
        # count could have said 60: the scrape summed them.
        counter_files = list(metrics_dir.glob("counter_*.db"))
        assert len(counter_files) >= 2, counter_files
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
