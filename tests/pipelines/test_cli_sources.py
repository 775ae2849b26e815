"""`quarry sources ...` end to end in a subprocess (as ops would run it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from storage.repositories import collections
from storage.tenancy import tenant_tx


def quarry(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("QUARRY_")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], env=full_env, capture_output=True, text=True,
                          timeout=180)


async def test_sources_cli(admin_url, settings, pool, make_tenant, folder_root, tmp_path):
    tenant = await make_tenant()
    async with tenant_tx(pool, tenant.id) as conn:
        await collections.create_collection(conn, tenant.id, "handbook", "")
    (folder_root / str(tenant.id)).mkdir()
    (folder_root / str(tenant.id) / "a.md").write_text("Pumice floats on water.")
    env = {"DATABASE_URL": admin_url, "QUARRY_APP_DB_PASSWORD": settings.app_db_password,
           "QUARRY_CONNECTOR_FOLDER_ROOTS": str(folder_root), "QUARRY_DATA_DIR": str(tmp_path / "data")}
    name = tenant.tenant.name

    bad = quarry("sources", "create", "--tenant", name, "--name", "docs", "--kind", "folder", "--collection",
                 "handbook", "--config", '{"path": "/etc"}', env=env)
    assert bad.returncode == 1 and "config.path" in bad.stderr and "Traceback" not in bad.stderr

    made = quarry("sources", "create", "--tenant", name, "--name", "docs", "--kind", "folder", "--collection",
                  "handbook", "--config", json.dumps({"path": "."}), "--schedule", "0 * * * *", env=env)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["schedule"] == "0 * * * *"

    synced = quarry("sources", "sync", "--tenant", name, "docs", "--inline", env=env)
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["run"]["added"] == 1

    queued = quarry("sources", "sync", "--tenant", name, "docs", env=env)
    assert json.loads(queued.stdout)["run"]["status"] == "queued"
    runs = json.loads(quarry("sources", "runs", "--tenant", name, "docs", env=env).stdout)
    assert [r["status"] for r in runs] == ["queued", "succeeded"]

    disabled = quarry("sources", "disable", "--tenant", name, "docs", env=env)
    assert json.loads(disabled.stdout)["enabled"] is False
    listed = json.loads(quarry("sources", "list", "--tenant", name, env=env).stdout)
    assert [s["name"] for s in listed] == ["docs"]
    gone = quarry("sources", "delete", "--tenant", name, "docs", env=env)
    assert json.loads(gone.stdout)["documents_deleted"] == 1
