"""Database preparation shared by `quarry up`, `quarry migrate` and the CLI.

`database_admin_url` yields the owner/migration URL: DATABASE_URL if set, else the embedded
server of a running `quarry up` (found through `.data/run/endpoints.json`), else an embedded
server started just for this command and stopped afterwards. The embedded server requires
passwords (storage/embedded.py); `with_embedded_secrets` gives the settings the app role's.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec

from core.settings import Settings
from storage.embedded import EmbeddedPostgres, pg_secrets
from storage.migrate import ensure_app_role, ensure_database, migrate
from storage.urls import with_database

__all__ = [
    "APP_DB",
    "DAGSTER_DB",
    "database_admin_url",
    "embedded_database",
    "endpoints_file",
    "prepare_database",
    "read_endpoints",
    "with_embedded_secrets",
]

DAGSTER_DB = "dagster"
APP_DB = "quarry"  # the platform's database on an embedded server


def embedded_pgdata(settings: Settings) -> Path:
    return settings.data_path / "postgres"


def with_embedded_secrets(settings: Settings) -> Settings:
    """With the embedded Postgres (no DATABASE_URL), the app role's password defaults to the
    one generated for that server (QUARRY_APP_DB_PASSWORD still wins)."""
    if settings.database_url is not None or settings.app_db_password is not None:
        return settings
    secrets = pg_secrets(embedded_pgdata(settings))
    assert secrets is not None
    return msgspec.structs.replace(settings, app_db_password=secrets.app)


def endpoints_file(settings: Settings) -> Path:
    return settings.data_path / "run" / "endpoints.json"


def read_endpoints(settings: Settings) -> dict[str, str] | None:
    """Endpoints of a live `quarry up` on this data dir, or None."""
    path = endpoints_file(settings)
    try:
        data = json.loads(path.read_text())
        os.kill(int(data["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return data  # type: ignore[no-any-return]


@contextmanager
def database_admin_url(settings: Settings) -> Iterator[str]:
    if settings.database_url:
        yield settings.database_url
        return
    running = read_endpoints(settings)
    if running:
        yield running["database_url"]
        return
    pg = EmbeddedPostgres(embedded_pgdata(settings))
    pg.start()
    try:
        yield asyncio.run(embedded_database(pg))
    finally:
        pg.stop()


async def embedded_database(pg: EmbeddedPostgres) -> str:
    """Owner URL of the platform database on an embedded server (created on first use)."""
    await ensure_database(pg.url(), APP_DB)
    return pg.url(APP_DB)


async def prepare_database(settings: Settings, admin_url: str) -> list[str]:
    """Migrate, create/update the app role, make Dagster's database. Idempotent."""
    applied = await migrate(admin_url)
    await ensure_app_role(admin_url, settings.app_db_user, settings.app_db_password)
    await ensure_database(admin_url, DAGSTER_DB)
    return applied


def dagster_url(admin_url: str) -> str:
    """SQLAlchemy URL for dagster-postgres: psycopg2 explicitly (see DESIGN pitfalls)."""
    url = with_database(admin_url, DAGSTER_DB)
    return url.replace("postgresql://", "postgresql+psycopg2://", 1).replace(
        "postgres://", "postgresql+psycopg2://", 1
    )
