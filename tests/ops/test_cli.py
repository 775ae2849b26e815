"""The `quarry` CLI as a user runs it: a real subprocess against the test database."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from storage.repositories.api_keys import principal_for_key


def quarry(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("QUARRY_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], env=full_env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("name", "value"), [
    ("QUARRY_API_WORKERS", "0"), ("QUARRY_PORT", "eighty"), ("DATABASE_URL", "mysql://x"),
    ("QUARRY_LOG_LEVEL", "loud"), ("QUARRY_DAGSTER", "maybe"),
])
def test_invalid_setting_stops_with_one_line_and_exit_2(name, value):
    result = quarry("migrate", env={name: value})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout


async def test_tenant_and_key_lifecycle_through_cli(admin_url, pool):
    env = {"DATABASE_URL": admin_url}
    name = f"cli-{os.getpid()}"
    created = quarry("tenants", "create", name, env=env)
    assert created.returncode == 0, created.stderr
    assert quarry("tenants", "create", name, env=env).returncode == 1  # duplicate: clear error

    made = quarry("keys", "create", "--tenant", name, "--role", "reader", env=env)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("qk_") and "\n" not in key
    async with pool.acquire() as conn:
        principal = await principal_for_key(conn, key)
    assert principal is not None and principal.role == "reader" and principal.tenant_name == name

    revoked = quarry("keys", "revoke", key[:11], env=env)
    assert revoked.returncode == 0, revoked.stderr
    async with pool.acquire() as conn:
        assert await principal_for_key(conn, key) is None

    missing = quarry("keys", "create", "--tenant", "no-such-tenant", "--role", "admin", env=env)
    assert missing.returncode == 1 and "no-such-tenant" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_migrate_is_idempotent_from_cli(admin_url):
    result = quarry("migrate", env={"DATABASE_URL": admin_url})
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout
