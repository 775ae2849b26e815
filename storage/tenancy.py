"""`tenant_tx`: the one way to run tenant-scoped queries.

Row-level security policies compare `tenant_id` with `current_setting('app.tenant_id')`.
The setting is made with `set_config(..., true)`, i.e. local to the transaction, on the same
connection as the queries, so a pooled connection never carries a tenant to the next user.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

import asyncpg

__all__ = ["tenant_tx"]


@asynccontextmanager
async def tenant_tx(
    pool: asyncpg.Pool, tenant_id: UUID | str, *, readonly: bool = False
) -> AsyncIterator[asyncpg.Connection]:
    async with pool.acquire() as conn, conn.transaction(readonly=readonly):
        await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant_id))
        yield conn
