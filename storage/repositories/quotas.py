"""A tenant's storage quota overrides and its usage (documents and bytes).

Usage is counted from `documents` (an index-only scan, migration 0010), not kept in a counter
that triggers would have to maintain: nothing can drift, and deleting documents needs no lock.
Uploads are made race-safe by `lock_usage`, a transaction-level advisory lock per tenant: the
second of two concurrent uploads waits for the first to commit, then counts its documents too.
Merging the overrides with the settings' defaults is the API's business (api/documents/quota.py).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from core.errors import NotFound
from storage.models import Tenant
from storage.repositories._rows import to_struct

__all__ = ["StorageUsage", "lock_usage", "quota_overrides", "set_tenant_quota", "usage"]

# First key of pg_advisory_xact_lock(int, int): the namespace of quota locks ("QU").
_QUOTA_LOCK_SPACE = 0x5155


class StorageUsage(msgspec.Struct, frozen=True):
    documents: int
    """Documents the tenant keeps (every status, uploads and synced sources alike)."""
    storage_bytes: int
    """Their size as uploaded or fetched."""


async def usage(conn: asyncpg.Connection, tenant_id: UUID) -> StorageUsage:
    """The current tenant's usage (run inside `tenant_tx`; RLS hides other tenants' rows)."""
    row = await conn.fetchrow(
        """SELECT count(*) AS documents, coalesce(sum(size_bytes), 0)::bigint AS storage_bytes
           FROM documents WHERE tenant_id = $1""",
        tenant_id,
    )
    assert row is not None
    return StorageUsage(documents=row["documents"], storage_bytes=row["storage_bytes"])


async def lock_usage(conn: asyncpg.Connection, tenant_id: UUID) -> dict[str, Any]:
    """Serialise this tenant's quota-checked writes until the transaction ends; returns the
    tenant's quota overrides. Count with `usage` *after* this statement: under READ COMMITTED
    the next statement's snapshot then includes every upload committed while this one waited."""
    if not conn.is_in_transaction():
        raise RuntimeError("lock_usage needs an open transaction")
    row = await conn.fetchrow(
        """SELECT pg_advisory_xact_lock($1, hashtext($2)) AS locked,
                  (SELECT quota FROM tenants WHERE id = $3) AS quota""",
        _QUOTA_LOCK_SPACE, str(tenant_id), tenant_id,
    )
    return dict(row["quota"] or {}) if row is not None else {}


async def quota_overrides(conn: asyncpg.Connection, tenant_id: UUID) -> dict[str, Any]:
    """The tenant's own overrides (inside its `tenant_tx`: a tenant sees its own row only)."""
    found = await conn.fetchval("SELECT quota FROM tenants WHERE id = $1", tenant_id)
    return dict(found or {})


async def set_tenant_quota(conn: asyncpg.Connection, tenant_name: str, quota: dict[str, Any]) -> Tenant:
    """Operator path: replace a tenant's quota overrides (`{}` = the settings' defaults)."""
    row = await conn.fetchrow("SELECT * FROM quarry_set_tenant_quota($1, $2)", tenant_name, quota)
    if row is None:
        raise NotFound(f"no tenant named {tenant_name!r}")
    return to_struct(row, Tenant)
