"""A per-tenant cap on concurrent ingestion across all workers (one atomic Redis script).

Slots live in a sorted set per tenant scored by acquisition time; slots older than the job
timeout are dropped first, so a worker killed while holding one cannot leak it forever.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

__all__ = ["acquire_slot", "release_slot"]

_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1] - ARGV[2])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


def _key(tenant_id: str) -> str:
    return f"quarry:ingest:slots:{tenant_id}"


async def acquire_slot(redis: Redis, tenant_id: str, token: str, cap: int, ttl_s: int) -> bool:
    acquired = await redis.eval(  # type: ignore[misc]
        _ACQUIRE, 1, _key(tenant_id), str(time.time()), str(ttl_s), str(cap), token
    )
    return bool(acquired)


async def release_slot(redis: Redis, tenant_id: str, token: str) -> None:
    await redis.zrem(_key(tenant_id), token)
