"""A per-tenant cap on concurrent ingestion across all workers (atomic Redis scripts).

Slots live in a sorted set per tenant, scored by the time their holder last renewed them
(Redis's clock). A running job renews its slot every third of the lease (`hold_slot`), and
slots not renewed within the lease are dropped before counting: a worker killed while holding
one frees it within a lease (a minute), not the job timeout (15 minutes) as before, when a
tenant whose jobs all died stayed blocked for that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.exceptions import RedisError

__all__ = ["LEASE_S", "acquire_slot", "hold_slot", "release_slot", "renew_slot"]

LEASE_S = 60.0
_log = logging.getLogger(__name__)

# KEYS[1] slots; ARGV: lease (s), cap, token. Scores are Redis's clock in ms.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1]) * 1000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - lease)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(2 * lease))
  return 1
end
return 0
"""

# KEYS[1] slots; ARGV: lease (s), token. Only a slot still held is renewed.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, ARGV[2])
  redis.call('PEXPIRE', KEYS[1], math.ceil(2 * tonumber(ARGV[1]) * 1000))
  return 1
end
return 0
"""


def _key(tenant_id: str) -> str:
    return f"quarry:ingest:slots:{tenant_id}"


async def acquire_slot(redis: Redis, tenant_id: str, token: str, cap: int, lease_s: float = LEASE_S) -> bool:
    return bool(await redis.eval(_ACQUIRE, 1, _key(tenant_id), str(lease_s), str(cap), token))  # type: ignore[misc]


async def renew_slot(redis: Redis, tenant_id: str, token: str, lease_s: float = LEASE_S) -> bool:
    """False when the slot is gone (it expired: the holder was stalled for a whole lease)."""
    return bool(await redis.eval(_RENEW, 1, _key(tenant_id), str(lease_s), token))  # type: ignore[misc]


async def release_slot(redis: Redis, tenant_id: str, token: str) -> None:
    await redis.zrem(_key(tenant_id), token)


@contextlib.asynccontextmanager
async def hold_slot(redis: Redis, tenant_id: str, token: str, lease_s: float = LEASE_S) -> AsyncIterator[None]:
    """Renew an acquired slot in the background while the block runs; release it after."""

    async def renew() -> None:
        while True:
            await asyncio.sleep(lease_s / 3)
            try:
                await renew_slot(redis, tenant_id, token, lease_s)
            except RedisError as exc:  # the next renewal may succeed; the job goes on meanwhile
                _log.warning("could not renew the ingest slot of tenant %s: %s", tenant_id, exc)

    task = asyncio.create_task(renew())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await release_slot(redis, tenant_id, token)
