"""A per-tenant cap on concurrent ingestion across all workers (storage.semaphore).

A running job renews its slot every third of the lease (`hold_slot`); a slot not renewed within
the lease is dropped before counting, so a worker killed while holding one frees it within a
minute - not the 15-minute job timeout, as before, when a tenant whose jobs all died stayed
blocked that long.

Renewals run on the job's event loop: the parse of a document runs in another process
(rag.parse_pool), so a hostile one cannot starve them of the GIL, and a parse that times out or
is cancelled is killed before the job leaves `hold_slot` (jobs.ingest): a slot is never free
while its document still burns a CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from redis.asyncio import Redis

from storage import semaphore

__all__ = ["LEASE_S", "acquire_slot", "hold_slot", "release_slot", "renew_slot"]

LEASE_S = 60.0


def _key(tenant_id: str) -> str:
    return f"quarry:ingest:slots:{tenant_id}"


async def acquire_slot(redis: Redis, tenant_id: str, token: str, cap: int, lease_s: float = LEASE_S) -> bool:
    return await semaphore.acquire(redis, _key(tenant_id), token, cap, lease_s)


async def renew_slot(redis: Redis, tenant_id: str, token: str, lease_s: float = LEASE_S) -> bool:
    return await semaphore.renew(redis, _key(tenant_id), token, lease_s)


async def release_slot(redis: Redis, tenant_id: str, token: str) -> None:
    await semaphore.release(redis, _key(tenant_id), token)


@contextlib.asynccontextmanager
async def hold_slot(redis: Redis, tenant_id: str, token: str, lease_s: float = LEASE_S) -> AsyncIterator[None]:
    """Renewed in the background while the block runs, released after."""
    async with semaphore.hold(redis, _key(tenant_id), token, lease_s):
        yield
