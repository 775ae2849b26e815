"""The served app freezes its startup heap, so full GC passes skip it (core/gc_tuning.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_PROBE = """
import gc, json
from api.app import app_factory
app_factory()
gc.collect()
print(json.dumps({"frozen": gc.get_freeze_count(), "walked": len(gc.get_objects())}))
"""


def test_app_factory_freezes_the_startup_heap(settings) -> None:
    env = {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url, "QUARRY_DATA_DIR": settings.data_dir,
           "QUARRY_APP_DB_PASSWORD": settings.app_db_password or "", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    probe = json.loads(out.strip().splitlines()[-1])
    # The app's own objects (routes, models, plugins) are frozen; a full pass walks what is left.
    assert probe["frozen"] > 50_000
    assert probe["walked"] < probe["frozen"] / 5
