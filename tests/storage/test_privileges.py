"""Least privilege of the app role: it writes only tenant data (tables under row-level
security) and calls only the SECURITY DEFINER functions it needs before a tenant is known.
A SQL injection through it can therefore not change plans, embedders or tenants, nor call the
operator functions that create tenants or change a tenant's plan."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from storage.migrate import APP_DEFINER_FUNCTIONS, ensure_app_role
from storage.repositories.api_keys import hash_key
from storage.tenancy import tenant_tx

WRITES = {
    "plans": [
        "INSERT INTO plans (name, limits) VALUES ('sneaky', '{}')",
        "UPDATE plans SET limits = '{}'",
        "DELETE FROM plans",
    ],
    "embedders": [
        "INSERT INTO embedders (name, kind, dim) VALUES ('sneaky', 'openai', 3)",
        "UPDATE embedders SET base_url = 'http://attacker.example'",
        "DELETE FROM embedders",
    ],
    "tenants": [
        "INSERT INTO tenants (name) VALUES ('sneaky')",
        "UPDATE tenants SET plan = 'unlimited', is_operator = true",
        "DELETE FROM tenants",
    ],
    "schema_migrations": [
        "SELECT * FROM schema_migrations",
        "DELETE FROM schema_migrations",
    ],
}

OPERATOR_CALLS = [
    "SELECT * FROM quarry_create_tenant('sneaky', 'default')",
    "SELECT * FROM quarry_list_tenants(NULL, 10)",
    "SELECT * FROM quarry_tenant_by_name('sneaky')",
    "SELECT * FROM quarry_set_tenant_limits('sneaky', 'unlimited', '{}')",
]


@pytest.mark.parametrize("sql", [sql for statements in WRITES.values() for sql in statements])
async def test_app_role_cannot_write_platform_tables(pool, make_tenant, sql):
    tenant = await make_tenant()  # even inside its own tenant's transaction (RLS is not the guard here)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with tenant_tx(pool, tenant.id) as conn:
            await conn.execute(sql)


@pytest.mark.parametrize("sql", OPERATOR_CALLS)
async def test_app_role_cannot_call_operator_functions(pool, sql):
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch(sql)


async def test_app_role_still_does_its_work(pool, make_tenant):
    tenant = await make_tenant()
    async with pool.acquire() as conn:  # authentication and the rate limiter's lookups
        principal = await conn.fetchrow("SELECT * FROM quarry_auth_lookup($1)", hash_key(tenant.admin_key))
        assert principal is not None and principal["tenant_id"] == tenant.id
        assert (await conn.fetchrow("SELECT * FROM quarry_tenant_limits($1)", tenant.id))["plan"] == "default"
        await conn.fetch("SELECT name, limits FROM plans")  # the limits policy reads plans
        await conn.fetch("SELECT name, dim FROM embedders")  # search reads embedders
    async with tenant_tx(pool, tenant.id) as conn:  # tenant data: read and written under RLS
        collection = await conn.fetchval(
            "INSERT INTO collections (tenant_id, name) VALUES ($1, 'c') RETURNING id", tenant.id)
        await conn.execute("UPDATE collections SET description = 'd' WHERE id = $1", collection)
        assert await conn.fetchval("SELECT quarry_collection_versions($1, NULL)", tenant.id)
        await conn.execute("DELETE FROM collections WHERE id = $1", collection)


async def test_only_tenant_tables_are_writable_and_only_allowed_definers_callable(owner_pool):
    """The general rule, checked on every table and function (those of later migrations too)."""
    async with owner_pool.acquire() as conn:
        writable = await conn.fetch(
            """SELECT c.relname, c.relrowsecurity FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
                 AND (has_table_privilege('quarry_app', c.oid, 'INSERT')
                      OR has_table_privilege('quarry_app', c.oid, 'UPDATE')
                      OR has_table_privilege('quarry_app', c.oid, 'DELETE')
                      OR has_table_privilege('quarry_app', c.oid, 'TRUNCATE'))""")
        callable_definers = await conn.fetch(
            """SELECT p.oid::regprocedure::text AS signature FROM pg_proc p
               JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE n.nspname = 'public' AND p.prosecdef AND has_function_privilege('quarry_app', p.oid, 'EXECUTE')""")
        public_definers = await conn.fetch(
            """SELECT p.oid::regprocedure::text AS signature FROM pg_proc p
               JOIN pg_namespace n ON n.oid = p.pronamespace,
                    aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
               WHERE n.nspname = 'public' AND p.prosecdef AND a.grantee = 0 AND a.privilege_type = 'EXECUTE'""")
    assert writable and all(row["relrowsecurity"] for row in writable)
    assert "tenants" not in {row["relname"] for row in writable}
    assert sorted(row["signature"] for row in callable_definers) == sorted(APP_DEFINER_FUNCTIONS)
    assert public_definers == []


async def test_functions_made_later_are_not_public(owner_pool, pool):
    """Default privileges: a SECURITY DEFINER function a later migration forgets to lock down
    is still not callable by the app role (nor by PUBLIC)."""
    name = f"quarry_test_definer_{uuid.uuid4().hex[:8]}"
    async with owner_pool.acquire() as conn:
        await conn.execute(f"CREATE FUNCTION {name}() RETURNS int LANGUAGE sql SECURITY DEFINER AS $$ SELECT 1 $$")
    try:
        async with pool.acquire() as conn:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetchval(f"SELECT {name}()")
    finally:
        async with owner_pool.acquire() as conn:
            await conn.execute(f"DROP FUNCTION {name}()")


async def test_ensure_app_role_takes_back_the_grants_of_older_versions(admin_url, owner_pool, pool):
    """Older versions granted DML on every table and EXECUTE on every function: an upgrade resets them."""
    async with owner_pool.acquire() as conn:
        await conn.execute("GRANT INSERT, UPDATE, DELETE ON plans, embedders TO quarry_app")
        await conn.execute("GRANT EXECUTE ON FUNCTION quarry_create_tenant(text, text) TO quarry_app")
    await ensure_app_role(admin_url, "quarry_app", None)
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM plans WHERE name = 'nonexistent'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT * FROM quarry_create_tenant('sneaky', 'default')")
