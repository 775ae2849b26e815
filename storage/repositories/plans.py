"""Rate-limit plans (platform-wide) and a tenant's plan and overrides.

Limits are stored as JSON objects ``{"<route class>": {"key": n, "tenant": n}}`` (requests
per minute; 0 = unlimited). Merging them with the settings' defaults is the API's business
(`api.limits.policy`); this module only reads and writes rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from core.errors import NotFound
from storage.models import Tenant
from storage.repositories._rows import to_struct, to_structs

__all__ = ["Plan", "TenantLimitsRow", "delete_plan", "get_plan", "list_plans", "put_plan", "set_tenant_limits",
           "tenant_limits"]


class Plan(msgspec.Struct, kw_only=True):
    name: str
    limits: dict[str, Any]
    updated_at: datetime


class TenantLimitsRow(msgspec.Struct, kw_only=True, frozen=True):
    plan: str
    tenant_limits: dict[str, Any]


async def put_plan(conn: asyncpg.Connection, name: str, limits: dict[str, Any]) -> Plan:
    row = await conn.fetchrow(
        """INSERT INTO plans (name, limits) VALUES ($1, $2)
           ON CONFLICT (name) DO UPDATE SET limits = excluded.limits, updated_at = now()
           RETURNING name, limits, updated_at""",
        name, limits,
    )
    assert row is not None
    return to_struct(row, Plan)


async def get_plan(conn: asyncpg.Connection, name: str) -> Plan | None:
    row = await conn.fetchrow("SELECT name, limits, updated_at FROM plans WHERE name = $1", name)
    return to_struct(row, Plan) if row else None


async def list_plans(conn: asyncpg.Connection) -> list[Plan]:
    return to_structs(await conn.fetch("SELECT name, limits, updated_at FROM plans ORDER BY name"), Plan)


async def delete_plan(conn: asyncpg.Connection, name: str) -> None:
    if await conn.execute("DELETE FROM plans WHERE name = $1", name) == "DELETE 0":
        raise NotFound(f"no plan named {name!r}")


async def set_tenant_limits(
    conn: asyncpg.Connection, tenant_name: str, plan: str | None, limits: dict[str, Any] | None
) -> Tenant:
    """Operator path: change any tenant's plan and/or overrides (None leaves it as is)."""
    row = await conn.fetchrow("SELECT * FROM quarry_set_tenant_limits($1, $2, $3)", tenant_name, plan, limits)
    if row is None:
        raise NotFound(f"no tenant named {tenant_name!r}")
    return to_struct(row, Tenant)


async def tenant_limits(conn: asyncpg.Connection, tenant_id: UUID) -> TenantLimitsRow | None:
    row = await conn.fetchrow("SELECT * FROM quarry_tenant_limits($1)", tenant_id)
    return to_struct(row, TenantLimitsRow) if row else None
