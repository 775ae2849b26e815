"""Rate limiting with GCRA (generic cell rate algorithm) in one atomic Redis script.

Each bucket allows `limit` requests per `period`, with a burst of up to `limit`: Redis keeps
one number per bucket, its theoretical arrival time (TAT). A request is allowed when the TAT
it would push forward stays within one period of now. Several buckets (per API key and per
tenant) are checked together and only consumed when ALL allow the request, so a request
refused by one bucket never uses up another's quota, and concurrent requests from every API
worker see one consistent count. Time comes from the Redis server (`TIME`), not from the
callers' clocks.

`TokenLeases` sits in front of the script in each process: a busy bucket set takes a *lease*
of several tokens in one call and hands them out locally for a short while (see its docstring).
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from redis.asyncio import Redis

__all__ = ["Bucket", "BucketState", "Decision", "GcraLimiter", "TokenLeases"]

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


LEASE_S = 1.0  # lifetime of a lease: tokens not handed out by then are lost (never over-admits)
MAX_LEASE = 32  # tokens per lease at most...
LEASE_FRACTION = 100  # ...and at most 1/100 of the smallest limit: below 200/min every request is exact

Hit = Callable[[Sequence[Bucket], int], Awaitable[Decision]]


@dataclass(slots=True)
class _Lease:
    decision: Decision  # Redis's answer for the whole lease: its `remaining` already excludes all of it
    tokens: int  # not handed out yet
    taken_at: float
    expires: float

    def take(self, now: float) -> Decision | None:
        if self.tokens == 0 or now >= self.expires:
            return None
        self.tokens -= 1
        return self.decision_at(now)

    def decision_at(self, now: float) -> Decision:
        # Remaining = what Redis had left + what this process still holds: it counts down by one
        # per request of the lease, as if each had gone to Redis.
        elapsed = now - self.taken_at
        return Decision(True, tuple(
            replace(s, remaining=s.remaining + self.tokens, reset_s=max(0.0, s.reset_s - elapsed))
            for s in self.decision.states))


@dataclass(slots=True)
class _BucketSet:
    lease: _Lease | None = None
    inflight: asyncio.Future[None] | None = None  # resolved when the call for the next lease ends
    window_start: float = -math.inf
    seen: int = 0  # requests in the current rate window
    prev: int = 0  # requests in the previous window (0 when it was not the one just before)
    redis_left: int = sys.maxsize  # fewest tokens Redis reported left at the last call

    def count(self, now: float, window: float) -> None:
        if now >= self.window_start + window:
            self.prev = self.seen if now < self.window_start + 2 * window else 0
            self.window_start, self.seen = now, 0
        self.seen += 1


class TokenLeases:
    """Per-process leases of tokens, so that a busy bucket set does not cost one Redis round
    trip per request.

    A lease of b tokens is one script call with cost b (all or nothing across the buckets, like
    a single request); this process then admits b requests of the same bucket set without Redis
    until the lease expires (`lease_s`). The tokens are consumed in Redis when leased, so
    admissions never exceed the limit; tokens that expire unused are the only error (under-
    admission, at most b - 1 per lease).

    b follows this process's request rate for the bucket set: the most requests seen in one
    window of lease_s / 2 (this one or the previous), so the lease lasts about twice as long as
    it takes to use it up and a key doing 1 req/s keeps b = 1. It is capped by `max_lease`, by
    1/100 of the smallest limit (limits below 200/min never lease: exact per request) and by
    the tokens Redis last said were left (near the limit leases shrink to 1). A refused lease
    of b > 1 is retried for one token, so a request is refused only when a single one would be;
    once Redis has said no token is left, requests call it one by one (exact) until one finds
    tokens left again.

    Single flight: one lease call per bucket set is in flight at a time; requests that find no
    usable lease meanwhile wait for it and take their tokens from it (or lead the next call).
    """

    def __init__(self, hit: Hit, *, lease_s: float = LEASE_S, max_lease: int = MAX_LEASE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._hit = hit
        self.lease_s = lease_s
        self.max_lease = max_lease
        self._clock = clock
        self._sets: dict[tuple[Bucket, ...], _BucketSet] = {}
        self._next_sweep = 0.0

    async def hit(self, buckets: Sequence[Bucket]) -> Decision:
        cap = min(self.max_lease, min(b.limit for b in buckets) // LEASE_FRACTION)
        if cap <= 1:
            return await self._hit(buckets, 1)
        now = self._clock()
        self._sweep(now)
        key = tuple(buckets)
        bs = self._sets.get(key)
        if bs is None:  # not setdefault: that would build a _BucketSet on every request
            bs = self._sets[key] = _BucketSet()
        bs.count(now, self.lease_s / 2)
        while (decision := bs.lease.take(now) if bs.lease else None) is None:
            if bs.redis_left == 0:
                # At the limit: each request asks Redis for itself, concurrently, as without
                # leases (queueing refusals behind one call at a time would only slow them).
                return await self._call(bs, buckets, 1)
            if bs.inflight is None:
                return await self._lead(bs, buckets, cap)
            # asyncio.wait, not `await bs.inflight`: cancelling this waiter must not cancel the
            # future every other waiter is waiting on.
            await asyncio.wait({bs.inflight})
            now = self._clock()
        return decision

    async def _lead(self, bs: _BucketSet, buckets: Sequence[Bucket], cap: int) -> Decision:
        done = asyncio.get_running_loop().create_future()
        bs.inflight = done
        try:
            # Requests that arrived in the same loop iteration queue up behind this call first,
            # so a burst on a cold bucket set is counted in the lease's size.
            await asyncio.sleep(0)
            size = max(1, min(cap, max(bs.prev, bs.seen), bs.redis_left))
            decision = await self._call(bs, buckets, size)
            if not decision.allowed and size > 1:  # near the limit: exact again
                size = 1
                decision = await self._call(bs, buckets, 1)
            if not decision.allowed:
                return decision
            now = self._clock()
            bs.lease = _Lease(decision, size - 1, now, now + self.lease_s)  # one token is this request's
            return bs.lease.decision_at(now)
        finally:
            # Also on failure or cancellation: the waiters look again, and one of them leads.
            bs.inflight = None
            done.set_result(None)

    async def _call(self, bs: _BucketSet, buckets: Sequence[Bucket], cost: int) -> Decision:
        decision = await self._hit(buckets, cost)
        bs.redis_left = min(s.remaining for s in decision.states)
        return decision

    def _sweep(self, now: float) -> None:
        """Forget bucket sets idle for a while (their leases have expired, their rate is 0)."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + 10 * self.lease_s
        idle = [k for k, bs in self._sets.items() if bs.inflight is None and now >= bs.window_start + 2 * self.lease_s]
        for k in idle:
            del self._sets[k]
