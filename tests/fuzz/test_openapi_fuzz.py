"""Property-based fuzzing of the whole HTTP API with schemathesis, against the real platform.

The API runs under Granian (as `quarry up` runs it) on a database of its own (`quarry_fuzz` on
the session's Postgres, so plans and tenants the fuzzer creates cannot disturb other tests) and
a Valkey keyspace of its own. schemathesis reads `/docs/openapi.json` and, for a bounded time per
key, sends generated requests - valid and invalid bodies, parameters and headers - to every
operation, once with an admin key of an operator tenant and once with a reader key. Checks: no
5xx (`not_a_server_error`) and every response matches the schema's declared status codes,
content types and bodies.

The fuzzing tenant follows a plan without rate limits (made through the admin API): otherwise
most of the budget would be spent on 429s.

`QUARRY_FUZZ_SECONDS` (default 45) is the time budget per key; schemathesis' own exit status is
the verdict, and its report (with a reproducing `curl` per failure) is printed on failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.settings import Settings
from storage.db import create_pool
from storage.migrate import ensure_app_role, ensure_database, migrate
from storage.repositories import api_keys, tenants
from storage.tenancy import tenant_tx
from storage.urls import with_credentials, with_database
from tests.live_server import LiveServer, live_api, unhandled_errors

FUZZ_DB = "quarry_fuzz"
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
BUDGET_S = int(os.environ.get("QUARRY_FUZZ_SECONDS", "45"))
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"

pytestmark = pytest.mark.skipif(not SCHEMATHESIS.exists(), reason="schemathesis is not installed (dev extra)")


def _app_url(admin_url: str, settings: Settings) -> str:
    return with_credentials(admin_url, settings.app_db_user, settings.app_db_password)


@pytest.fixture(scope="module")
async def fuzz_admin_url(settings: Settings) -> str:
    assert settings.database_url is not None
    await ensure_database(settings.database_url, FUZZ_DB)
    url = with_database(settings.database_url, FUZZ_DB)
    await migrate(url)
    await ensure_app_role(url, settings.app_db_user, settings.app_db_password)
    return url


@pytest.fixture(scope="module")
def server(settings: Settings, fuzz_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The API under Granian on the fuzzing database and a Valkey keyspace of its own."""
    assert settings.redis_url is not None
    env = {"DATABASE_URL": fuzz_admin_url, "REDIS_URL": _redis_db(settings.redis_url, 7),
           "QUARRY_DATA_DIR": str(tmp_path_factory.mktemp("fuzz-data")), "QUARRY_LOG_LEVEL": "warning",
           "QUARRY_APP_DB_PASSWORD": settings.app_db_password or ""}
    with live_api(env, tmp_path_factory.mktemp("fuzz") / "granian.log") as server:
        yield server


@pytest.fixture(scope="module")
def api(server: LiveServer) -> str:
    return server.base


@pytest.fixture(scope="module")
async def keys(settings: Settings, fuzz_admin_url: str, api: str) -> dict[str, str]:
    """An operator tenant with an admin and a reader key, and a collection."""
    app_pool = await create_pool(_app_url(fuzz_admin_url, settings), min_size=1, max_size=2)
    owner = await create_pool(fuzz_admin_url, min_size=1, max_size=1)
    try:
        async with owner.acquire() as conn:  # the app role cannot create tenants
            tenant = await tenants.create_tenant(conn, f"fuzz-{uuid.uuid4().hex[:8]}")
            await tenants.set_operator(conn, tenant.id, True)
        async with tenant_tx(app_pool, tenant.id) as conn:
            admin, _ = await api_keys.create_key(conn, tenant.id, "admin")
            reader, _ = await api_keys.create_key(conn, tenant.id, "reader")
    finally:
        await app_pool.close()
        await owner.close()
    async with httpx.AsyncClient(base_url=api, headers={"Authorization": f"Bearer {admin}"}, timeout=10) as client:
        # Something to find for the operations that read collections.
        created = await client.post("/v1/collections", json={"name": "fuzz"})
        assert created.status_code == 201, created.text
    return {"admin": admin, "reader": reader, "tenant": tenant.name}


def _without_rate_limits(api: str, keys: dict[str, str]) -> None:
    """The tenant on a plan without limits; again before each run, as the admin run may have
    deleted the plan or changed the tenant's limits (it may: those are its operations)."""
    unlimited = {c: {"key": 0, "tenant": 0} for c in ("read", "write", "search", "chat", "upload", "admin")}
    with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {keys['admin']}"}, timeout=10) as client:
        assert client.put("/v1/admin/plans/fuzz-unlimited", json={"limits": unlimited}).status_code == 200
        body = {"plan": "fuzz-unlimited", "limits": {}}
        response = client.put(f"/v1/admin/tenants/{keys['tenant']}/limits", json=body)
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("role", ["admin", "reader"])
def test_no_server_error_and_schema_conformance(api: str, keys: dict[str, str], role: str,
                                                tmp_path: Path) -> None:
    """Generated requests to every operation: no 5xx, every response as the schema declares."""
    _without_rate_limits(api, keys)
    report = tmp_path / "report"
    command = [
        str(SCHEMATHESIS), "--no-color", "run", f"{api}/docs/openapi.json", "--checks", CHECKS,
        "--header", f"Authorization: Bearer {keys[role]}", "--max-time", str(BUDGET_S),
        "--workers", "1", "--request-timeout", "20", "--phases", "examples,coverage,fuzzing",
        "--suppress-health-check", "all", "--report", "junit", "--report-dir", str(report),
        "--output-sanitize", "true",
        # The admin would find its own key id (GET /v1/me) and revoke it, ending the run's
        # authentication; the reader run still sends it (403).
        *(["--exclude-operation-id", "revokeKey"] if role == "admin" else []),
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                            timeout=BUDGET_S * 4 + 120, check=False)
    output = result.stdout + result.stderr
    Path(os.environ.get("FUZZ_OUT", str(tmp_path)), f"fuzz-{role}.txt").write_text(output)
    assert result.returncode == 0, output[-20000:]


def _redis_db(url: str, db: int) -> str:
    """The same Redis server, another logical database."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def test_server_logged_no_unhandled_error(server: LiveServer) -> None:
    """After the runs above (same module, same server): no unhandled exception in the server's
    log. An error inside a stream that had already answered 200 would not show as a 5xx."""
    assert not unhandled_errors(server), server.output()
