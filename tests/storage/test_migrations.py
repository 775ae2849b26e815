"""Migrations: applied once, checksummed, serialised by an advisory lock; the app role."""

from __future__ import annotations

import asyncio
import shutil
import uuid

import asyncpg
import pytest

from storage.migrate import (
    MIGRATIONS_DIR,
    MigrationError,
    ensure_app_role,
    load_migrations,
    migrate,
)
from storage.urls import with_credentials


async def _fetch(url: str, sql: str, *args):
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def test_migrating_again_is_a_noop(admin_url):
    assert await migrate(admin_url) == []


async def test_schema_migrations_records_checksums(admin_url):
    rows = await _fetch(admin_url, "SELECT version, name, checksum FROM schema_migrations ORDER BY version")
    expected = [(m.version, m.name, m.checksum) for m in load_migrations()]
    assert [tuple(r) for r in rows] == expected
    assert all(len(r["checksum"]) == 64 for r in rows)


async def test_changed_applied_migration_is_refused(fresh_db_url, tmp_path):
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory)
    applied = await migrate(fresh_db_url, directory)
    assert applied == [f"{m.version:04d}_{m.name}" for m in load_migrations()]

    # A new file is applied on its own...
    (directory / "0999_extra.sql").write_text("CREATE TABLE extra_table (id int);")
    assert await migrate(fresh_db_url, directory) == ["0999_extra"]

    # ...but editing one that was already applied is an error, and nothing is recorded.
    first = sorted(directory.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited after the fact\n")
    with pytest.raises(MigrationError, match=first.stem):
        await migrate(fresh_db_url, directory)
    count = await _fetch(fresh_db_url, "SELECT count(*) FROM schema_migrations")
    assert count[0][0] == len(load_migrations()) + 1


async def test_concurrent_migrations_apply_each_file_once(fresh_db_url):
    results = await asyncio.gather(*(migrate(fresh_db_url) for _ in range(3)))
    names = [f"{m.version:04d}_{m.name}" for m in load_migrations()]
    assert sorted(results, key=len) == [[], [], names]
    rows = await _fetch(fresh_db_url, "SELECT version, count(*) FROM schema_migrations GROUP BY version")
    assert {r["version"]: r["count"] for r in rows} == {m.version: 1 for m in load_migrations()}


def test_bad_file_names_and_duplicate_versions_are_rejected(tmp_path):
    (tmp_path / "1_nope.sql").write_text("")
    with pytest.raises(MigrationError, match="bad migration file name"):
        load_migrations(tmp_path)
    (tmp_path / "1_nope.sql").unlink()
    (tmp_path / "0001_a.sql").write_text("")
    (tmp_path / "0001_b.sql").write_text("")
    with pytest.raises(MigrationError, match="share a version"):
        load_migrations(tmp_path)


async def test_ensure_app_role_is_idempotent_and_unprivileged(admin_url):
    await ensure_app_role(admin_url, "quarry_app", None)
    await ensure_app_role(admin_url, "quarry_app", None)
    rows = await _fetch(
        admin_url,
        "SELECT rolsuper, rolbypassrls, rolcanlogin, rolcreaterole, rolcreatedb FROM pg_roles"
        " WHERE rolname = 'quarry_app'",
    )
    assert len(rows) == 1
    assert dict(rows[0]) == {"rolsuper": False, "rolbypassrls": False, "rolcanlogin": True,
                             "rolcreaterole": False, "rolcreatedb": False}


async def test_ensure_app_role_demotes_a_privileged_role(fresh_db_url):
    await migrate(fresh_db_url)
    role = "quarry_app_demote_test"
    await _fetch(fresh_db_url, f'DROP ROLE IF EXISTS "{role}"')
    await _fetch(fresh_db_url, f'CREATE ROLE "{role}" SUPERUSER BYPASSRLS')
    try:
        await ensure_app_role(fresh_db_url, role, "s3cret")
        sql = "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1"
        rows = await _fetch(fresh_db_url, sql, role)
        assert tuple(rows[0]) == (False, False)
    finally:
        await _fetch(fresh_db_url, f'DROP OWNED BY "{role}"')
        await _fetch(fresh_db_url, f'DROP ROLE "{role}"')


async def test_ensure_app_role_on_several_databases_at_once(make_fresh_db, servers):
    """Roles are cluster-wide while advisory locks are per database: runs must not collide."""
    urls = [await make_fresh_db() for _ in range(4)]
    await asyncio.gather(*(migrate(url) for url in urls))
    role = f"quarry_app_race_{uuid.uuid4().hex[:8]}"
    try:
        await asyncio.gather(*(ensure_app_role(url, role, "pw") for url in urls))
        for url in urls:  # every database granted the role its access
            conn = await asyncpg.connect(with_credentials(url, role, "pw"))
            try:
                assert await conn.fetchval("SELECT count(*) FROM collections") == 0
            finally:
                await conn.close()
    finally:
        for url in urls:
            await _fetch(url, f'DROP OWNED BY "{role}"')
        await _fetch(servers.postgres.url(), f'DROP ROLE IF EXISTS "{role}"')
