"""Helpers for read-replica tests: pause a standby's replay, poll for a condition."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg


async def eventually(check: Callable[[], Awaitable[Any]], what: str, timeout_s: float = 30.0) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout_s` naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def replay_paused(replica_admin_url: str) -> AsyncIterator[None]:
    """The replica receives WAL but applies none of it until the block ends: a deterministic lag."""
    conn = await asyncpg.connect(replica_admin_url)
    try:
        await conn.execute("SELECT pg_wal_replay_pause()")
        await eventually(lambda: conn.fetchval("SELECT pg_get_wal_replay_pause_state() = 'paused'"),
                         "the replica to pause its replay")
        yield
    finally:
        await conn.execute("SELECT pg_wal_replay_resume()")
        await conn.close()


async def replica_has(replica_admin_url: str, sql: str, *args: Any) -> bool:
    """Whether `sql` (a boolean query, run as superuser on the replica) is true there yet."""
    conn = await asyncpg.connect(replica_admin_url)
    try:
        return bool(await conn.fetchval(sql, *args))
    finally:
        await conn.close()
