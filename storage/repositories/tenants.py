"""Tenants. Creation and listing go through SECURITY DEFINER functions (see 0002_rls.sql):
the app role can otherwise only see the tenant of its current transaction."""

from __future__ import annotations

import asyncpg

from core.errors import Conflict, Unprocessable
from storage.models import Tenant
from storage.repositories._rows import to_struct, to_structs

__all__ = ["create_tenant", "get_tenant_by_name", "list_tenants", "set_operator"]


async def create_tenant(conn: asyncpg.Connection, name: str, plan: str = "default") -> Tenant:
    try:
        row = await conn.fetchrow("SELECT * FROM quarry_create_tenant($1, $2)", name, plan)
    except asyncpg.UniqueViolationError:
        raise Conflict(f"a tenant named {name!r} already exists") from None
    except asyncpg.CheckViolationError:
        raise Unprocessable(
            "tenant name must be 1-63 characters of a-z, 0-9, '_' or '-', starting with a "
            "letter or digit"
        ) from None
    assert row is not None
    return to_struct(row, Tenant)


async def list_tenants(conn: asyncpg.Connection, after: str | None, limit: int) -> list[Tenant]:
    rows = await conn.fetch("SELECT * FROM quarry_list_tenants($1, $2)", after, limit)
    return to_structs(rows, Tenant)


async def get_tenant_by_name(conn: asyncpg.Connection, name: str) -> Tenant | None:
    row = await conn.fetchrow("SELECT * FROM quarry_tenant_by_name($1)", name)
    return to_struct(row, Tenant) if row else None


async def set_operator(owner_conn: asyncpg.Connection, tenant_id: object, value: bool) -> None:
    """Operator status is granted by ops with the owner role only (CLI), never by the API."""
    await owner_conn.execute("UPDATE tenants SET is_operator = $2 WHERE id = $1", tenant_id, value)
