"""Tenant and key administration for the CLI (owner role, RLS via tenant_tx)."""

from __future__ import annotations

import asyncpg

from core.errors import NotFound
from storage.models import ApiKey, Role, Tenant
from storage.repositories import api_keys, tenants
from storage.tenancy import tenant_tx

DEMO_TENANT = "demo"


async def _pool(admin_url: str) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(admin_url, min_size=1, max_size=2)
    assert pool is not None
    return pool


async def create_tenant(admin_url: str, name: str, operator: bool = False) -> Tenant:
    pool = await _pool(admin_url)
    try:
        async with pool.acquire() as conn, conn.transaction():
            tenant = await tenants.create_tenant(conn, name)
            if operator:
                await tenants.set_operator(conn, tenant.id, True)
                tenant.is_operator = True
        return tenant
    finally:
        await pool.close()


async def create_key(admin_url: str, tenant_name: str, role: Role, name: str = "") -> tuple[str, ApiKey]:
    pool = await _pool(admin_url)
    try:
        async with pool.acquire() as conn:
            tenant = await tenants.get_tenant_by_name(conn, tenant_name)
        if tenant is None:
            raise NotFound(f"no tenant named {tenant_name!r}")
        async with tenant_tx(pool, tenant.id) as conn:
            return await api_keys.create_key(conn, tenant.id, role, name)
    finally:
        await pool.close()


async def revoke_key(admin_url: str, prefix: str) -> ApiKey:
    pool = await _pool(admin_url)
    try:
        async with pool.acquire() as conn:
            return await api_keys.revoke_key_by_prefix(conn, prefix)
    finally:
        await pool.close()


async def ensure_demo_tenant(admin_url: str) -> str | None:
    """Create the demo (operator) tenant and return its first admin key; None if it exists."""
    pool = await _pool(admin_url)
    try:
        async with pool.acquire() as conn:
            if await tenants.get_tenant_by_name(conn, DEMO_TENANT) is not None:
                return None
    finally:
        await pool.close()
    await create_tenant(admin_url, DEMO_TENANT, operator=True)
    key, _ = await create_key(admin_url, DEMO_TENANT, "admin", name="demo admin")
    return key
