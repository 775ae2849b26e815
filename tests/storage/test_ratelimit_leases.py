"""Token leases (storage.ratelimit.TokenLeases) against the real GCRA script on Valkey.

The leases' clock is a fake one the tests move by hand (Redis keeps its own), so lease
lifetimes and rate windows are exact here; every script call is recorded with its cost.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
from redis.asyncio import Redis

from storage.caches.guard import RedisUnavailable
from storage.ratelimit import Bucket, Decision, GcraLimiter, TokenLeases

# Long periods: the buckets refill too slowly to matter while a test runs (Redis's clock is real).
SLOW = 36000.0


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Recorder:
    """The script call, counted; `gate` (when set up) holds calls until released."""

    def __init__(self, gcra: GcraLimiter) -> None:
        self.gcra = gcra
        self.costs: list[int] = []
        self.gate: asyncio.Event | None = None
        self.fail = False
        self._called = asyncio.Event()

    async def __call__(self, buckets: Sequence[Bucket], cost: int) -> Decision:
        self.costs.append(cost)
        self._called.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RedisUnavailable("down (test)")
        return await self.gcra.hit(buckets, cost)

    async def until_calls(self, n: int) -> None:
        """Let the other tasks run until n calls have been made (the timeout is a hang guard)."""
        async with asyncio.timeout(10):
            while len(self.costs) < n:
                self._called.clear()
                await self._called.wait()


@pytest.fixture
async def gcra(servers) -> AsyncIterator[GcraLimiter]:
    redis = Redis.from_url(servers.valkey.url)
    yield GcraLimiter(redis)
    await redis.aclose()


def bucket_set(key_limit: int, tenant_limit: int | None = None, period_s: float = 60.0) -> list[Bucket]:
    prefix = f"test:rl:{{{uuid.uuid4()}}}"
    found = [Bucket(f"{prefix}:key", key_limit, period_s)]
    if tenant_limit:
        found.append(Bucket(f"{prefix}:tenant", tenant_limit, period_s))
    return found


def make(gcra: GcraLimiter) -> tuple[TokenLeases, Recorder, Clock]:
    rec, clock = Recorder(gcra), Clock()
    return TokenLeases(rec, clock=clock), rec, clock


def remaining(d: Decision) -> int:
    return d.binding.remaining


async def test_limits_below_200_per_minute_never_lease(gcra):
    leases, rec, _ = make(gcra)
    buckets = bucket_set(199, 100000)
    decisions = [await leases.hit(buckets) for _ in range(12)]
    assert rec.costs == [1] * 12
    assert [remaining(d) for d in decisions] == list(range(198, 186, -1))


async def test_sequential_requests_share_leases_and_remaining_counts_down(gcra):
    leases, rec, _ = make(gcra)
    buckets = bucket_set(100000, 1000000)
    seen: list[tuple[int, int]] = []  # (script calls so far, remaining)
    for _ in range(200):
        d = await leases.hit(buckets)
        assert d.allowed
        seen.append((len(rec.costs), remaining(d)))
    # A cold bucket set doubles its lease while the requests keep coming, up to 32.
    assert rec.costs[:6] == [1, 2, 4, 8, 16, 32] and set(rec.costs[5:]) == {32}
    assert len(rec.costs) == 11 and sum(rec.costs) - 200 < 32
    # Within a lease, Remaining goes down by exactly one per request (Redis's count + tokens held).
    for (calls_a, rem_a), (calls_b, rem_b) in itertools.pairwise(seen):
        if calls_b == calls_a:
            assert rem_b == rem_a - 1


async def test_lease_size_follows_the_request_rate(gcra):
    leases, rec, clock = make(gcra)
    slow, fast, small = bucket_set(100000), bucket_set(100000), bucket_set(1000, 100000)
    for _ in range(10):  # 1 request/s: every lease is one token, none wasted
        assert (await leases.hit(slow)).allowed
        clock.t += 1.0
    assert rec.costs == [1] * 10
    rec.costs.clear()
    for _ in range(300):  # 1000 requests/s: leases of 32 once the first window has been seen
        assert (await leases.hit(fast)).allowed
        clock.t += 0.001
    assert max(rec.costs) == 32 and rec.costs[-5:] == [32] * 5
    assert sum(rec.costs) - 300 < 32
    rec.costs.clear()
    for _ in range(100):  # limit 1000/min: at most 1000 // 100 = 10 tokens per lease
        assert (await leases.hit(small)).allowed
        clock.t += 0.001
    assert max(rec.costs) == 10


async def test_an_expired_lease_is_not_used_and_its_tokens_stay_consumed(gcra):
    leases, rec, clock = make(gcra)
    buckets = bucket_set(1000, period_s=SLOW)
    for _ in range(4):
        await leases.hit(buckets)
    assert rec.costs == [1, 2, 4]  # requests 4-7 lease; one token handed out, three held
    clock.t += leases.lease_s
    d = await leases.hit(buckets)
    assert rec.costs == [1, 2, 4, 1] and d.allowed  # the held three expired: back to Redis
    # Redis counted all 8 tokens: 1000 - 8 left (the three expired ones are the under-admission).
    assert remaining(d) == 1000 - 8


async def test_near_the_limit_a_refused_lease_falls_back_to_one_token(gcra):
    leases, rec, _ = make(gcra)
    buckets = bucket_set(1000, period_s=SLOW)
    for _ in range(8):
        assert (await leases.hit(buckets)).allowed
    assert rec.costs == [1, 2, 4, 8] and sum(rec.costs) - 8 == 7  # 7 tokens held here
    # Another process takes everything but one token.
    other = await gcra.hit(buckets, 1000 - 15 - 1)
    assert other.allowed and remaining(other) == 1
    results = [await leases.hit(buckets) for _ in range(10)]
    assert [d.allowed for d in results] == [True] * 8 + [False] * 2  # 7 held + the last one in Redis
    # The held tokens need no call; then a lease of 10 (the cap) is refused and one token is
    # taken; then Redis has said 0 are left, so single tokens only.
    assert rec.costs[4:] == [10, 1, 1, 1]
    # Remaining from the lease: what Redis had left when it was taken (985) + tokens still held.
    assert [remaining(d) for d in results[:8]] == [991, 990, 989, 988, 987, 986, 985, 0]
    assert results[-1].retry_after_s >= 1


async def test_at_the_limit_requests_call_redis_concurrently(gcra):
    """Once Redis has said nothing is left, requests do not queue behind one call at a time
    (a flood of refused requests would pile up): each asks Redis itself, as without leases."""
    leases, rec, _ = make(gcra)
    buckets = bucket_set(1000, period_s=SLOW)
    assert (await gcra.hit(buckets, 1000)).allowed  # another process took everything
    assert not (await leases.hit(buckets)).allowed
    rec.gate = asyncio.Event()
    tasks = [asyncio.create_task(leases.hit(buckets)) for _ in range(5)]
    await rec.until_calls(1 + 5)  # all five in flight at once
    rec.gate.set()
    results = await asyncio.gather(*tasks)
    assert rec.costs == [1] * 6 and not any(d.allowed for d in results)


async def test_two_processes_racing_never_exceed_the_limit(gcra):
    """Two lease holders (two API workers) with parallel requests: never more than the limit,
    and at most each one's last lease short of it."""
    limit = 400  # leases of at most 4
    buckets = bucket_set(limit, 100000, period_s=SLOW)
    (one, _, _), (two, _, _) = make(gcra), make(gcra)
    results = await asyncio.gather(*[(one, two)[i % 2].hit(buckets) for i in range(600)])
    admitted = sum(d.allowed for d in results)
    assert limit - 2 * 3 <= admitted <= limit


async def test_a_burst_with_no_lease_makes_one_call(gcra):
    leases, rec, _ = make(gcra)
    buckets = bucket_set(100000)
    rec.gate = asyncio.Event()
    tasks = [asyncio.create_task(leases.hit(buckets)) for _ in range(20)]
    await rec.until_calls(1)
    rec.gate.set()
    results = await asyncio.gather(*tasks)
    assert rec.costs == [20]
    assert all(d.allowed for d in results)
    assert sorted(remaining(d) for d in results) == [100000 - 20 + i for i in range(20)]


async def test_a_cancelled_leader_does_not_strand_its_waiters(gcra):
    leases, rec, _ = make(gcra)
    buckets = bucket_set(100000)
    rec.gate = asyncio.Event()
    leader = asyncio.create_task(leases.hit(buckets))
    await rec.until_calls(1)
    waiters = [asyncio.create_task(leases.hit(buckets)) for _ in range(5)]
    await asyncio.sleep(0)
    leader.cancel()
    await rec.until_calls(2)  # a waiter leads the next call
    rec.gate.set()
    async with asyncio.timeout(10):  # hang guard only
        results = await asyncio.gather(*waiters)
    assert leader.cancelled()
    assert all(d.allowed for d in results) and len(rec.costs) == 2


async def test_a_cancelled_waiter_does_not_disturb_the_others(gcra):
    leases, rec, _ = make(gcra)
    buckets = bucket_set(100000)
    rec.gate = asyncio.Event()
    tasks = [asyncio.create_task(leases.hit(buckets)) for _ in range(6)]
    await rec.until_calls(1)
    tasks[3].cancel()
    await asyncio.sleep(0)
    rec.gate.set()
    async with asyncio.timeout(10):
        done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[3], asyncio.CancelledError)
    assert all(isinstance(d, Decision) and d.allowed for i, d in enumerate(done) if i != 3)
    assert rec.costs == [6]


async def test_redis_down_uses_the_held_lease_then_fails_every_request(gcra):
    leases, rec, _ = make(gcra)
    buckets = bucket_set(100000)
    for _ in range(4):
        await leases.hit(buckets)
    assert rec.costs == [1, 2, 4]  # three tokens held
    rec.fail = True
    assert all([(await leases.hit(buckets)).allowed for _ in range(3)])
    assert len(rec.costs) == 3
    # No lease left: every request (leaders and waiters) gets the failure, none hangs.
    async with asyncio.timeout(10):
        outcomes = await asyncio.gather(*[leases.hit(buckets) for _ in range(5)], return_exceptions=True)
    assert all(isinstance(o, RedisUnavailable) for o in outcomes)
