"""Shared test infrastructure: ONE embedded Postgres (+pgvector) and ONE Valkey per session.

Tests isolate themselves with fresh tenants (see `make_tenant`), not fresh servers. The API
and all tenant queries go through the non-superuser app role, so row-level security is real.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from api.app import app_database_url, create_app
from core.settings import Settings, load_settings
from storage.db import create_pool
from storage.embedded import EmbeddedPostgres, EmbeddedValkey
from storage.migrate import ensure_app_role, ensure_database, migrate
from storage.models import Tenant
from storage.repositories import api_keys, tenants
from storage.tenancy import tenant_tx
from storage.urls import with_database

TEST_DB = "quarry_test"


@dataclass
class Servers:
    postgres: EmbeddedPostgres
    valkey: EmbeddedValkey


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("servers")
    pg = EmbeddedPostgres(root / "pg")
    valkey = EmbeddedValkey(root / "valkey")
    pg.start()
    try:
        valkey.start()
        try:
            yield Servers(pg, valkey)
        finally:
            valkey.stop()
    finally:
        pg.stop()


@pytest.fixture(scope="session")
async def admin_url(servers: Servers) -> str:
    """Owner/migration role URL of a migrated test database."""
    await ensure_database(servers.postgres.url(), TEST_DB)
    url = with_database(servers.postgres.url(), TEST_DB)
    await migrate(url)
    # Neither embedded server trusts local connections: every URL carries its generated password.
    await ensure_app_role(url, "quarry_app", servers.postgres.app_password)
    return url


@pytest.fixture(scope="session")
def settings(admin_url: str, servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    # Code that reads its settings from the environment (Dagster resources) finds the app role's
    # password where `quarry up` puts it for its children.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("QUARRY_APP_DB_PASSWORD", servers.postgres.app_password)
        yield _settings(admin_url, servers, tmp_path_factory)


def _settings(admin_url: str, servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return load_settings(
        environ={}, dotenv=None, database_url=admin_url, redis_url=servers.valkey.url,
        app_db_password=servers.postgres.app_password,
        data_dir=str(tmp_path_factory.mktemp("data")), db_pool_max=10, ingest_concurrency_per_tenant=4,
        # Generous: a loaded CI machine must not trip the Redis breaker (250 ms in production).
        redis_timeout_ms=2000,
    )


@pytest.fixture(scope="session")
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """Pool of the application role (RLS applies)."""
    pool = await create_pool(app_database_url(settings), min_size=1, max_size=5)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def owner_pool(admin_url: str) -> AsyncIterator[asyncpg.Pool]:
    """Pool of the owner/superuser role: for test setup only, never for isolation checks."""
    pool = await create_pool(admin_url, min_size=1, max_size=3)
    yield pool
    await pool.close()


_counter = itertools.count()


@dataclass
class TenantHandle:
    tenant: Tenant
    admin_key: str

    @property
    def id(self) -> uuid.UUID:
        return self.tenant.id

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}


@pytest.fixture
def make_tenant(pool: asyncpg.Pool, owner_pool: asyncpg.Pool) -> Callable[..., Awaitable[TenantHandle]]:
    """A fresh tenant with an admin key; `operator=True` makes it a platform operator."""

    async def factory(operator: bool = False) -> TenantHandle:
        name = f"t{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:6]}"
        async with owner_pool.acquire() as conn:  # creating tenants is for the owner role only
            tenant = await tenants.create_tenant(conn, name)
        if operator:
            async with owner_pool.acquire() as conn:
                await tenants.set_operator(conn, tenant.id, True)
            tenant.is_operator = True
        async with tenant_tx(pool, tenant.id) as conn:
            key, _ = await api_keys.create_key(conn, tenant.id, "admin")
        return TenantHandle(tenant, key)

    return factory


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    async with AsyncTestClient(app=create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
async def worker_ctx(settings: Settings) -> AsyncIterator[dict]:  # type: ignore[type-arg]
    """Resources of an arq worker (pool, embedder, tokenizer, blobs), shared by the session."""
    from jobs.worker import shutdown_resources, startup_resources

    ctx: dict = {}  # type: ignore[type-arg]
    await startup_resources(ctx, settings)
    yield ctx
    await shutdown_resources(ctx)


@pytest.fixture
def run_jobs(settings: Settings, worker_ctx: dict) -> Callable[[], Awaitable[None]]:  # type: ignore[type-arg]
    from tests.ingest_helpers import run_jobs as _run

    return lambda: _run(settings, worker_ctx)


@pytest.fixture(scope="session")
def replica_server(
    servers: Servers, admin_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedPostgres]:
    """A streaming read replica of the session's Postgres: a second embedded server copied with
    pg_basebackup (hot standby). Made only for the tests that ask for it (~1-2 s); tests that stop
    it or pause its replay restore it before they end."""
    standby = EmbeddedPostgres(tmp_path_factory.mktemp("replica") / "pg", standby_of=servers.postgres)
    standby.start()
    try:
        yield standby
    finally:
        standby.stop()


@pytest.fixture(scope="session")
def replica_admin_url(replica_server: EmbeddedPostgres) -> str:
    """Superuser URL of the test database on the replica (to pause and resume its replay)."""
    return with_database(replica_server.url(), TEST_DB)
