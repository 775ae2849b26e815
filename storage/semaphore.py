"""A counting semaphore shared by every process: one Redis sorted set of leases per key.

Members are holders' tokens, scored by when the holder took or last renewed its place (Redis's
clock, ms). Atomic scripts drop members older than the lease before counting, so a holder that
died frees its place within one lease; a holder that runs longer renews (`hold`). Scripts are
called by hash (EVALSHA: the text travels once per Redis server), loaded on first use.

Used for the per-tenant caps on ingestion jobs (jobs/limits.py) and chat streams
(api/chat/limits.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

__all__ = ["acquire", "apply", "hold", "release", "renew"]

_log = logging.getLogger(__name__)

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
# KEYS[1] the set; ARGV: lease (s), token. Only a place still held is renewed.
_RENEW = _NOW + """
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, ARGV[2])
  redis.call('PEXPIRE', KEYS[1], math.ceil(2 * tonumber(ARGV[1]) * 1000))
  return 1
end
return 0
"""
# Many operations in one call (several semaphores): the releases, then the acquisitions, so a
# place freed in the batch can be taken in it. KEYS: the release keys, then the acquire keys;
# ARGV[1] the number of releases, then their tokens, then (lease s, cap, token) per acquire.
# Returns 1/0 per acquire.
_APPLY = _NOW + """
local releases = tonumber(ARGV[1])
for i = 1, releases do
  redis.call('ZREM', KEYS[i], ARGV[1 + i])
end
local out = {}
local a = releases + 2
for k = releases + 1, #KEYS do
  local lease = tonumber(ARGV[a]) * 1000
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', now - lease)
  if redis.call('ZCARD', KEYS[k]) < tonumber(ARGV[a + 1]) then
    redis.call('ZADD', KEYS[k], now, ARGV[a + 2])
    redis.call('PEXPIRE', KEYS[k], math.ceil(2 * lease))
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
  a = a + 3
end
return out
"""
_SHA = {script: hashlib.sha1(script.encode()).hexdigest() for script in (_RENEW, _APPLY)}  # noqa: S324


async def _run(redis: Redis, script: str, key: str, *args: Any) -> bool:
    try:
        return bool(await redis.evalsha(_SHA[script], 1, key, *args))  # type: ignore[misc]
    except NoScriptError:
        return bool(await redis.eval(script, 1, key, *args))  # type: ignore[misc]


async def apply(
    redis: Redis, releases: Sequence[tuple[str, str]], acquires: Sequence[tuple[str, str, int, float]]
) -> list[bool]:
    """In one round trip: release (key, token) places, then try to acquire (key, token, cap,
    lease_s) ones; returns whether each acquisition got its place."""
    keys = [key for key, _ in releases] + [key for key, *_ in acquires]
    args: list[Any] = [len(releases), *(token for _, token in releases)]
    for _, token, cap, lease_s in acquires:
        args += [str(lease_s), str(cap), token]
    try:
        out = await redis.evalsha(_SHA[_APPLY], len(keys), *keys, *args)  # type: ignore[misc]
    except NoScriptError:
        out = await redis.eval(_APPLY, len(keys), *keys, *args)  # type: ignore[misc]
    return [bool(x) for x in out or []]


async def acquire(redis: Redis, key: str, token: str, cap: int, lease_s: float) -> bool:
    """Take a place if fewer than `cap` live leases are held; False when full."""
    return (await apply(redis, (), [(key, token, cap, lease_s)]))[0]


async def renew(redis: Redis, key: str, token: str, lease_s: float) -> bool:
    """False when the place is gone (its lease ran out: the holder stalled a whole lease)."""
    return await _run(redis, _RENEW, key, str(lease_s), token)


async def release(redis: Redis, key: str, token: str) -> None:
    await redis.zrem(key, token)


@contextlib.asynccontextmanager
async def hold(redis: Redis, key: str, token: str, lease_s: float) -> AsyncIterator[None]:
    """Renew an acquired place every third of the lease while the block runs; release it after."""

    async def renewing() -> None:
        while True:
            await asyncio.sleep(lease_s / 3)
            try:
                await renew(redis, key, token, lease_s)
            except RedisError as exc:  # the next renewal may succeed; the holder goes on meanwhile
                _log.warning("could not renew %s: %s", key, exc)

    task = asyncio.create_task(renewing())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await release(redis, key, token)
