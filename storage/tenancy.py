"""`tenant_tx`: the one way to run tenant-scoped queries.

Row-level security policies compare `tenant_id` with `current_setting('app.tenant_id')`.
The setting is made with `set_config(..., true)`, i.e. local to the transaction, on the same
connection as the queries, so a pooled connection never carries a tenant to the next user.
Extra transaction-local settings (e.g. `hnsw.ef_search` for a search) ride in the same
statement, so they cost no extra round trip; so does the principal (`principal_settings`),
which the owner-only policies of conversations and messages compare with.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from uuid import UUID

import asyncpg

from storage.models import Principal

__all__ = ["PRINCIPAL_SETTING", "enter_tenant", "principal_id", "principal_settings", "tenant_tx"]

PRINCIPAL_SETTING = "app.principal_id"


async def enter_tenant(conn: asyncpg.Connection, tenant_id: UUID | str) -> None:
    """Switch an open transaction to `tenant_id` (transaction-local). For the rare flow that
    must span a tenant-less step and a tenant step atomically, e.g. creating a tenant and
    its first key; everything else uses `tenant_tx`."""
    if not conn.is_in_transaction():
        raise RuntimeError("enter_tenant needs an open transaction")
    await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant_id))


@asynccontextmanager
async def tenant_tx(
    pool: asyncpg.Pool, tenant_id: UUID | str, *, readonly: bool = False,
    local_settings: Mapping[str, str] | None = None,
) -> AsyncIterator[asyncpg.Connection]:
    async with pool.acquire() as conn, conn.transaction(readonly=readonly):
        names = ["app.tenant_id", *(local_settings or {})]
        values = [str(tenant_id), *(local_settings or {}).values()]
        calls = ", ".join(f"set_config(${2 * i + 1}, ${2 * i + 2}, true)" for i in range(len(names)))
        await conn.execute(f"SELECT {calls}", *[x for pair in zip(names, values, strict=True) for x in pair])
        yield conn


def principal_id(principal: Principal) -> UUID:
    """Who owns what a caller creates (conversations): the key's user if it has one, else the key."""
    return principal.user_id or principal.key_id


def principal_settings(owner_id: UUID) -> dict[str, str]:
    """`tenant_tx(..., local_settings=principal_settings(owner))`: act as that principal, whose
    conversations alone row-level security then shows (migration 0011)."""
    return {PRINCIPAL_SETTING: str(owner_id)}
