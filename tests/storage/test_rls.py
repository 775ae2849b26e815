"""Row-level security, checked through the application role (never the owner role)."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from api.app import app_database_url
from core.errors import NotFound
from storage.db import create_pool
from storage.repositories import api_keys, users
from storage.tenancy import tenant_tx

TENANT_TABLES = ["users", "api_keys", "collections", "sources", "documents", "chunks",
                 "embeddings", "sync_runs", "conversations", "messages"]
ID_COLUMN = {"embeddings": "chunk_id"}


async def test_app_role_sees_nothing_without_a_tenant(pool, owner_pool, two_tenants):
    async with owner_pool.acquire() as conn:  # the rows really exist
        for table in [*TENANT_TABLES, "tenants"]:
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") >= 2, table
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT current_user") == "quarry_app"
        for table in [*TENANT_TABLES, "tenants"]:
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table


async def test_tenant_sees_only_its_own_rows(pool, two_tenants):
    a, _ = two_tenants
    async with tenant_tx(pool, a.tenant_id, readonly=True, local_settings=a.as_owner) as conn:
        for table in TENANT_TABLES:
            owners = await conn.fetch(f"SELECT DISTINCT tenant_id FROM {table}")
            assert [r["tenant_id"] for r in owners] == [a.tenant_id], table
        assert await conn.fetchval("SELECT array_agg(id) FROM tenants") == [a.tenant_id]
        # Full-text and vector search cannot reach the other tenant either.
        hits = await conn.fetch(
            "SELECT tenant_id FROM chunks WHERE tsv @@ plainto_tsquery('english', 'secret')")
        assert {r["tenant_id"] for r in hits} == {a.tenant_id}
        near = await conn.fetch(
            "SELECT tenant_id FROM embeddings ORDER BY embedding <=> '[0.1,0.2,0.3]' LIMIT 10")
        assert {r["tenant_id"] for r in near} == {a.tenant_id}


@pytest.mark.parametrize("table", TENANT_TABLES)
async def test_tenant_cannot_touch_other_tenants_rows(pool, two_tenants, table):
    a, b = two_tenants
    column = ID_COLUMN.get(table, "id")
    target = b.ids[table]
    async with tenant_tx(pool, b.tenant_id, readonly=True, local_settings=b.as_owner) as conn:
        before = await conn.fetchrow(f"SELECT * FROM {table} WHERE {column} = $1", target)
    assert before is not None
    async with tenant_tx(pool, a.tenant_id, local_settings=a.as_owner) as conn:
        assert await conn.fetchrow(f"SELECT * FROM {table} WHERE {column} = $1", target) is None
        update = f"UPDATE {table} SET tenant_id = tenant_id WHERE {column} = $1"
        assert await conn.execute(update, target) == "UPDATE 0"
        assert await conn.execute(f"DELETE FROM {table} WHERE {column} = $1", target) == "DELETE 0"
    async with tenant_tx(pool, b.tenant_id, readonly=True, local_settings=b.as_owner) as conn:
        assert await conn.fetchrow(f"SELECT * FROM {table} WHERE {column} = $1", target) == before


async def test_rows_cannot_be_moved_to_another_tenant(pool, two_tenants):
    a, b = two_tenants
    async with tenant_tx(pool, a.tenant_id) as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE collections SET tenant_id = $1 WHERE id = $2",
                               b.tenant_id, a.ids["collections"])


@pytest.mark.parametrize("sql", [
    "INSERT INTO collections (tenant_id, name) VALUES ($1, 'intruder')",
    "INSERT INTO conversations (tenant_id) VALUES ($1)",
    "INSERT INTO users (tenant_id, email, role) VALUES ($1, 'x@example.com', 'admin')",
    "INSERT INTO api_keys (tenant_id, prefix, key_hash, role) VALUES ($1, 'qk_intruder', '\\x00', 'admin')",
])
async def test_inserting_for_another_tenant_is_refused(pool, two_tenants, sql):
    a, b = two_tenants
    async with tenant_tx(pool, a.tenant_id) as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(sql, b.tenant_id)


async def test_app_role_cannot_write_tenants(pool, two_tenants):
    """Operator status and tenant rows are the owner role's business (CLI), never the app's."""
    a, _ = two_tenants
    async with tenant_tx(pool, a.tenant_id) as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE tenants SET is_operator = true WHERE id = $1", a.tenant_id)
    forged = uuid.uuid4()
    async with tenant_tx(pool, forged) as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("INSERT INTO tenants (id, name, is_operator) VALUES ($1, $2, true)",
                               forged, f"forged-{forged.hex[:8]}")


async def test_repositories_stay_within_the_tenant(pool, two_tenants):
    a, b = two_tenants
    async with tenant_tx(pool, a.tenant_id) as conn:
        assert await users.get_user(conn, b.ids["users"]) is None
        assert (await users.get_user(conn, a.ids["users"])).tenant_id == a.tenant_id
        with pytest.raises(NotFound):
            await api_keys.revoke_key(conn, b.ids["api_keys"])
        assert {k.tenant_id for k in await api_keys.list_keys(conn, include_revoked=True)} == {a.tenant_id}
        assert {u.tenant_id for u in await users.list_users(conn, None, 100)} == {a.tenant_id}
    async with tenant_tx(pool, b.tenant_id, readonly=True) as conn:
        keys = {k.id: k for k in await api_keys.list_keys(conn)}
    assert keys[b.ids["api_keys"]].revoked_at is None


async def test_tenant_setting_does_not_leak_between_transactions(settings, two_tenants):
    a, _ = two_tenants
    single = await create_pool(app_database_url(settings), min_size=1, max_size=1)
    try:
        async with tenant_tx(single, a.tenant_id) as conn:
            backend = await conn.fetchval("SELECT pg_backend_pid()")
            assert await conn.fetchval("SELECT count(*) FROM collections") == 1
        with pytest.raises(RuntimeError):
            async with tenant_tx(single, a.tenant_id) as conn:
                raise RuntimeError("rolled back")
        async with single.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == backend  # same connection
            assert await conn.fetchval("SELECT current_setting('app.tenant_id', true)") in (None, "")
            assert await conn.fetchval("SELECT count(*) FROM collections") == 0
    finally:
        await single.close()


async def test_readonly_tenant_tx_refuses_writes(pool, two_tenants):
    a, _ = two_tenants
    async with tenant_tx(pool, a.tenant_id, readonly=True) as conn:
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute("INSERT INTO collections (tenant_id, name) VALUES ($1, 'ro')", a.tenant_id)


async def test_app_role_cannot_read_schema_migrations(pool):
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT * FROM schema_migrations")


async def test_every_tenant_table_forces_row_level_security(owner_pool):
    """Every table with a tenant_id column (also ones added later), and tenants itself."""
    async with owner_pool.acquire() as conn:
        rows = await conn.fetch(
            """SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
                      EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid) AS has_policy
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
                 AND (c.relname = 'tenants' OR EXISTS (
                      SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'))""")
    flags = {r["relname"]: (r["relrowsecurity"], r["relforcerowsecurity"], r["has_policy"]) for r in rows}
    assert {*TENANT_TABLES, "tenants"} <= flags.keys()
    assert {table: f for table, f in flags.items() if f != (True, True, True)} == {}
