"""Rate limiting with GCRA (generic cell rate algorithm) in one atomic Redis script.

Each bucket allows `limit` requests per `period`, with a burst of up to `limit`: Redis keeps
one number per bucket, its theoretical arrival time (TAT). A request is allowed when the TAT
it would push forward stays within one period of now. Several buckets (per API key and per
tenant) are checked together and only consumed when ALL allow the request, so a request
refused by one bucket never uses up another's quota, and concurrent requests from every API
worker see one consistent count. Time comes from the Redis server (`TIME`), not from the
callers' clocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

__all__ = ["Bucket", "BucketState", "Decision", "GcraLimiter"]

# KEYS: one per bucket. ARGV[1]: cost; then per bucket: limit, period in ms.
# Returns {allowed, then per bucket: remaining, retry_after_ms, reset_ms}.
# TATs are kept as ms with 3 decimals (string.format), so the arithmetic never depends on
# how Lua prints doubles; a tiny epsilon absorbs float error in `limit * interval`.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local cost = tonumber(ARGV[1])
local eps = 0.001
local allowed = 1
local out = {}
local tats = {}
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i])
  local period = tonumber(ARGV[2 * i + 1])
  local interval = period / limit
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local new_tat = tat + interval * cost
  local allow_at = new_tat - period
  if allow_at <= now + eps then
    tats[i] = new_tat
    out[3 * i - 2] = math.floor((now - allow_at) / interval + eps)
    out[3 * i - 1] = 0
    out[3 * i] = math.ceil(new_tat - now)
  else
    allowed = 0
    out[3 * i - 2] = math.max(0, math.floor((now - (tat - period)) / interval + eps))
    out[3 * i - 1] = math.ceil(allow_at - now)
    out[3 * i] = math.ceil(tat - now)
  end
end
if allowed == 1 then
  for i = 1, #KEYS do
    redis.call('SET', KEYS[i], string.format('%.3f', tats[i]), 'PX', math.ceil(tats[i] - now) + 1000)
  end
end
table.insert(out, 1, allowed)
return out
"""


@dataclass(frozen=True, slots=True)
class Bucket:
    key: str
    limit: int  # requests per period (>= 1)
    period_s: float = 60.0


@dataclass(frozen=True, slots=True)
class BucketState:
    bucket: Bucket
    remaining: int
    retry_after_s: float  # 0 when allowed
    reset_s: float  # until the bucket is full again


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    states: tuple[BucketState, ...]

    @property
    def binding(self) -> BucketState:
        """The bucket that decides: when refused, the one to wait longest for; else the one
        with the fewest requests left (ties: the smaller limit)."""
        if not self.allowed:
            return max(self.states, key=lambda s: s.retry_after_s)
        return min(self.states, key=lambda s: (s.remaining, s.bucket.limit))

    @property
    def retry_after_s(self) -> int:
        return max(1, math.ceil(max(s.retry_after_s for s in self.states)))


class GcraLimiter:
    """Checks and consumes several buckets atomically (one EVALSHA round trip)."""

    def __init__(self, redis: Redis) -> None:
        self._script = redis.register_script(_GCRA)

    async def hit(self, buckets: Sequence[Bucket], cost: int = 1) -> Decision:
        args: list[str | int] = [cost]
        for b in buckets:
            args += [b.limit, int(b.period_s * 1000)]
        raw = await self._script(keys=[b.key for b in buckets], args=args)
        allowed, values = bool(raw[0]), [int(v) for v in raw[1:]]
        states = tuple(
            BucketState(b, remaining=values[3 * i], retry_after_s=values[3 * i + 1] / 1000,
                        reset_s=values[3 * i + 2] / 1000)
            for i, b in enumerate(buckets)
        )
        return Decision(allowed, states)
