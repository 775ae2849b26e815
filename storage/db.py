"""The asyncpg pool. Its `init` registers pgvector (vectors go in as numpy arrays) and a
msgspec codec for jsonb (dicts in, dicts out)."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec
from pgvector.asyncpg import register_vector

from storage.pooling import QuarryPool

__all__ = ["create_pool"]


async def _init_connection(conn: asyncpg.Connection) -> None:
    await register_vector(conn)
    # jsonb in and out as Python values (dicts, lists), encoded by msgspec.
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", format="text",
        encoder=lambda value: msgspec.json.encode(value).decode(), decoder=msgspec.json.decode,
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Released connections skip asyncpg's default reset query (advisory unlock, CLOSE ALL,
    UNLISTEN, RESET ALL): one more round trip on every release, about a tenth of a cached
    search's CPU. Pooled connections never carry session state here - the tenant and search
    settings are transaction-local (`set_config(..., true)`), advisory locks are transaction
    locks, and listeners use their own connections - and asyncpg still rolls back a
    transaction left open before the connection is reused. Keep it that way: a session-level
    SET or lock on a pooled connection would leak into the next request."""


async def create_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    statement_timeout_ms: int = 30_000,
    pgbouncer: bool = False,
    acquire_timeout_s: float | None = None,
    metrics_name: str = "primary",
) -> asyncpg.Pool:
    """A pool for the application role. `pgbouncer=True` disables the prepared-statement
    cache, which transaction pooling cannot carry between server connections.
    `acquire_timeout_s` makes a `QuarryPool` (storage.pooling): acquisitions wait at most that
    long, then raise `Unavailable` (503), and the pool reports its gauges to /metrics."""
    extra: dict[str, Any] = {"statement_cache_size": 0} if pgbouncer else {}
    options: dict[str, Any] = dict(
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        server_settings={
            "application_name": "quarry",
            "statement_timeout": str(statement_timeout_ms),
        },
        **extra,
    )
    if acquire_timeout_s is not None:
        pool = await QuarryPool(
            url, acquire_timeout_s=acquire_timeout_s, metrics_name=metrics_name, max_queries=50_000,
            max_inactive_connection_lifetime=300.0, loop=None, connection_class=asyncpg.Connection,
            record_class=asyncpg.Record, **options,
        )
        pool.sample()
        return pool
    pool = await asyncpg.create_pool(url, **options)
    assert pool is not None
    return pool
