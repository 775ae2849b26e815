"""Rate limits: atomic under concurrency, per key and per tenant, per route class, plans set
through the admin API, headers, and the fail-open / fail-closed modes when Redis is down."""

from __future__ import annotations

import asyncio
import itertools
import time

import msgspec
import pytest
from redis.asyncio import Redis

from api.limits import middleware
from tests.api.helpers import assert_problem, bearer, create_key
from tests.serving_helpers import concurrent_client

ADMIN_FREE = "admin=0/0,write=0/0"


def limited(settings, spec: str, **extra):
    # A generous Redis deadline: on a loaded machine a slow (not failed) Redis must not turn into
    # fail-open and let extra requests through.
    return msgspec.structs.replace(settings, rate_limits=f"{spec},{ADMIN_FREE}", **{"redis_timeout_ms": 3000, **extra})


async def test_parallel_requests_exactly_the_limit_succeed(settings, make_tenant):
    """25 requests at once, spread over two app instances (two API workers sharing Redis)."""
    tenant = await make_tenant()
    spec = limited(settings, "read=7/1000")
    async with concurrent_client(spec) as (one, _), concurrent_client(spec) as (two, _):
        await one.get("/healthz")
        responses = await asyncio.gather(*[(one, two)[i % 2].get("/v1/me", headers=tenant.headers)
                                           for i in range(25)])
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(ok) == 7 and len(refused) == 18, [r.status_code for r in responses]
    # The script is atomic: each allowed request saw a different count.
    assert sorted(int(r.headers["ratelimit-remaining"]) for r in ok) == [0, 1, 2, 3, 4, 5, 6]
    for r in ok:
        assert r.headers["ratelimit-limit"] == "7"
    for r in refused:
        body = assert_problem(r, 429)
        assert body["rate_class"] == "read" and body["scope"] == "key"
        assert r.headers["ratelimit-remaining"] == "0"
        assert 1 <= int(r.headers["retry-after"]) <= 60 // 7 + 1
        assert int(r.headers["retry-after"]) <= int(r.headers["ratelimit-reset"]) <= 60


async def test_headers_count_down_consistently(settings, app_client, make_tenant):
    tenant = await make_tenant()
    async with app_client(limited(settings, "read=4/1000")) as client:
        seen = []
        for _ in range(4):
            r = await client.get("/v1/me", headers=tenant.headers)
            assert r.status_code == 200
            seen.append((r.headers["ratelimit-limit"], int(r.headers["ratelimit-remaining"]),
                         int(r.headers["ratelimit-reset"])))
            assert r.headers["ratelimit-policy"] == "4;w=60, 1000;w=60"
        assert [s[1] for s in seen] == [3, 2, 1, 0]
        assert {s[0] for s in seen} == {"4"}
        resets = [s[2] for s in seen]
        assert resets == sorted(resets) and 0 < resets[0] and resets[-1] <= 60  # the quota refills later
        refused = await client.get("/v1/me", headers=tenant.headers)
        assert_problem(refused, 429)
        # 4 per minute: one request every 15 s comes back.
        assert 1 <= int(refused.headers["retry-after"]) <= 15


async def test_tenants_have_independent_limits(settings, make_tenant):
    a, b = await make_tenant(), await make_tenant()
    async with concurrent_client(limited(settings, "read=100/3")) as (client, _):
        results = await asyncio.gather(*[client.get("/v1/me", headers=t.headers) for t in (a, b) for _ in range(6)])
    by_tenant = [sum(r.status_code == 200 for r in results[i * 6:(i + 1) * 6]) for i in (0, 1)]
    assert by_tenant == [3, 3]
    refused = [r for r in results if r.status_code == 429]
    assert len(refused) == 6
    for r in refused:
        assert assert_problem(r, 429)["scope"] == "tenant"


async def test_key_limit_and_tenant_limit_combine(settings, app_client, make_tenant):
    tenant = await make_tenant()
    async with app_client(limited(settings, "read=3/5")) as client:
        other = bearer((await create_key(client, tenant.headers, "reader"))["key"])
        first = [await client.get("/v1/me", headers=tenant.headers) for _ in range(10)]
        assert [r.status_code for r in first] == [200] * 3 + [429] * 7
        assert first[-1].json()["scope"] == "key"
        # The 7 refused requests used none of the tenant's quota: 5 - 3 = 2 are left for the other key.
        second = [await client.get("/v1/me", headers=other) for _ in range(4)]
        assert [r.status_code for r in second] == [200, 200, 429, 429]
        assert second[-1].json()["scope"] == "tenant"
        assert second[1].headers["ratelimit-limit"] == "5"  # the tenant bucket binds now


async def test_route_classes_have_separate_buckets(settings, app_client, make_tenant):
    tenant = await make_tenant()
    spec = "read=2/100,write=2/100,admin=0/0"
    async with app_client(msgspec.structs.replace(settings, rate_limits=spec, redis_timeout_ms=3000)) as client:
        for _ in range(2):
            assert (await client.get("/v1/me", headers=tenant.headers)).status_code == 200
        assert (await client.get("/v1/me", headers=tenant.headers)).status_code == 429
        r = await client.post("/v1/collections", json={"name": "c1"}, headers=tenant.headers)
        assert r.status_code == 201 and r.headers["ratelimit-remaining"] == "1"
        # admin=0/0: unlimited, so no rate-limit headers at all
        r = await client.get("/v1/admin/keys", headers=tenant.headers)
        assert r.status_code == 200 and "ratelimit-limit" not in r.headers


async def test_public_endpoints_are_not_limited(settings, app_client):
    async with app_client(limited(settings, "read=1/1")) as client:
        for _ in range(3):
            r = await client.get("/healthz")
            assert r.status_code == 200 and "ratelimit-limit" not in r.headers


async def test_disabled_rate_limiting_sends_no_headers(settings, app_client, make_tenant):
    tenant = await make_tenant()
    async with app_client(limited(settings, "read=1/1", rate_limit_enabled=False)) as client:
        for _ in range(3):
            r = await client.get("/v1/me", headers=tenant.headers)
            assert r.status_code == 200 and "ratelimit-limit" not in r.headers


async def test_plans_and_tenant_overrides_through_the_admin_api(settings, app_client, make_tenant):
    operator, tenant = await make_tenant(operator=True), await make_tenant()
    plan = f"tiny-{tenant.tenant.name[-6:]}"
    async with app_client(limited(settings, "read=50/500")) as client:
        r = await client.put(f"/v1/admin/plans/{plan}", json={"limits": {"read": {"key": 2}}},
                             headers=operator.headers)
        assert r.status_code == 200, r.text
        assert r.json()["limits"] == {"read": {"key": 2}}
        url = f"/v1/admin/tenants/{tenant.tenant.name}/limits"
        r = await client.get(url, headers=operator.headers)
        assert r.status_code == 200 and r.json()["plan"] == "default"
        assert r.json()["effective"]["read"] == {"key": 50, "tenant": 500}

        r = await client.put(url, json={"plan": plan}, headers=operator.headers)
        assert r.status_code == 200, r.text
        assert r.json()["effective"]["read"] == {"key": 2, "tenant": 500}  # plan over defaults, field by field
        codes = [(await client.get("/v1/me", headers=tenant.headers)).status_code for _ in range(3)]
        assert codes == [200, 200, 429]

        # A tenant override beats the plan; 0 = unlimited.
        r = await client.put(url, json={"limits": {"read": {"key": 0, "tenant": 0}}}, headers=operator.headers)
        assert r.status_code == 200 and r.json()["plan"] == plan
        assert r.json()["effective"]["read"] == {"key": 0, "tenant": 0}
        for _ in range(5):
            r = await client.get("/v1/me", headers=tenant.headers)
            assert r.status_code == 200 and "ratelimit-limit" not in r.headers

        # Changing the plan itself reaches its tenants (here masked by the override for `read`).
        r = await client.put(f"/v1/admin/plans/{plan}", json={"limits": {"write": {"key": 1}}},
                             headers=operator.headers)
        assert r.status_code == 200
        r = await client.get(url, headers=operator.headers)
        assert r.json()["effective"]["write"]["key"] == 1

        assert (await client.get("/v1/admin/plans", headers=operator.headers)).status_code == 200
        assert_problem(await client.put(url, json={"plan": "no-such-plan"}, headers=operator.headers), 422)
        assert_problem(await client.put(url, json={"limits": {"teleport": {"key": 1}}}, headers=operator.headers),
                       422)
        assert_problem(await client.put(url, json={"limits": {"read": {"key": -1}}}, headers=operator.headers), 422)
        assert_problem(await client.put("/v1/admin/tenants/nobody-here/limits", json={"plan": "default"},
                                        headers=operator.headers), 404)
        assert_problem(await client.put(url, json={"plan": "default"}, headers=tenant.headers), 403)
        assert_problem(await client.put(f"/v1/admin/plans/{plan}", json={"limits": {}}, headers=tenant.headers), 403)
        r = await client.delete(f"/v1/admin/plans/{plan}", headers=operator.headers)
        assert r.status_code == 204
        assert_problem(await client.delete(f"/v1/admin/plans/{plan}", headers=operator.headers), 404)


async def _wait_for_redis(client, headers, deadline_s: float = 15.0):
    """After a restart, until a limited request carries rate-limit headers again."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        r = await client.get("/v1/me", headers=headers)
        if "ratelimit-limit" in r.headers:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("rate limiting did not recover after Redis came back")


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_redis_down(settings, app_client, make_tenant, servers, mode):
    tenant = await make_tenant()
    async with app_client(limited(settings, "read=100/1000", rate_limit_fail_mode=mode)) as client:
        assert (await client.get("/v1/me", headers=tenant.headers)).status_code == 200
        servers.valkey.stop()
        try:
            for _ in range(3):
                r = await client.get("/v1/me", headers=tenant.headers)
                if mode == "open":
                    assert r.status_code == 200 and "ratelimit-limit" not in r.headers
                else:
                    body = assert_problem(r, 503)
                    assert "rate limiting" in body["detail"] and r.headers["retry-after"] == "1"
        finally:
            servers.valkey.start()
        await _wait_for_redis(client, tenant.headers)
        r = await client.get("/v1/me", headers=tenant.headers)
        assert r.status_code == 200 and int(r.headers["ratelimit-remaining"]) < 100


# --- Token leases (storage.ratelimit.TokenLeases): limits of 200/min and more ---


@pytest.fixture
async def script_calls(servers):
    """Rate-limit script calls Valkey has served so far (INFO commandstats; /v1/me runs no other script)."""
    redis = Redis.from_url(servers.valkey.url)

    async def count() -> int:
        stats = await redis.info("commandstats")
        return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval"))

    yield count
    await redis.aclose()


async def test_a_busy_key_makes_far_fewer_script_calls_than_requests(settings, make_tenant, script_calls):
    tenant = await make_tenant()
    async with concurrent_client(limited(settings, "read=100000/1000000")) as (client, _):
        await client.get("/healthz")
        before = await script_calls()
        seen = []  # (script calls so far, remaining) after each request
        for _ in range(100):
            r = await client.get("/v1/me", headers=tenant.headers)
            assert r.status_code == 200
            seen.append((await script_calls() - before, int(r.headers["ratelimit-remaining"])))
    # Leases double while the requests keep coming (1, 2, 4, ... 32 tokens): 8 calls for 100
    # requests in one rate window, a few more if the requests straddle windows.
    assert seen[-1][0] <= 15, seen
    # Within a lease Remaining counts down by one per request (Redis's count at lease time plus
    # the tokens still held); it may only go up when a new lease sees the bucket refilled.
    within = [(a[1], b[1]) for a, b in itertools.pairwise(seen) if a[0] == b[0]]
    assert len(within) >= 80 and all(rem_b == rem_a - 1 for rem_a, rem_b in within)


async def test_a_burst_on_a_cold_key_makes_a_few_script_calls(settings, make_tenant, script_calls):
    """Requests that find no lease wait for the one call in flight (single flight) instead of
    each calling Redis; the leases double, so 40 requests need at most 1+2+4+8+16+32 = 6 calls
    (8 allowed for a burst that straddles a rate window)."""
    tenant = await make_tenant()
    async with concurrent_client(limited(settings, "read=100000/1000000")) as (client, _):
        await client.get("/healthz")
        before = await script_calls()
        responses = await asyncio.gather(*[client.get("/v1/me", headers=tenant.headers) for _ in range(40)])
        calls = await script_calls() - before
    assert [r.status_code for r in responses] == [200] * 40
    assert calls <= 8, calls


async def test_parallel_requests_with_leases_never_exceed_the_limit(settings, make_tenant, monkeypatch):
    """Like the exact test above, with a limit where leases are used (400/min: up to 4 tokens)."""
    # An hour's period: the bucket refills 400/h, i.e. not during the test, so the limit is exact.
    monkeypatch.setattr(middleware, "_PERIOD_S", 3600.0)
    tenant = await make_tenant()
    spec, limit, cap = limited(settings, "read=400/100000"), 400, 4
    async with concurrent_client(spec) as (one, app_one), concurrent_client(spec) as (two, app_two):
        for app in (app_one, app_two):
            # Leases that outlive the test: on a loaded machine an expired lease would lose its
            # tokens (allowed under-admission), which is not what this test counts.
            app.state.rate_limiter.leases.lease_s = 3600.0
        await one.get("/healthz")
        responses = await asyncio.gather(*[(one, two)[i % 2].get("/v1/me", headers=tenant.headers)
                                           for i in range(600)])
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(refused) == 600
    # Never more than the limit; short of it by at most what each worker's last lease still holds.
    assert limit - 2 * (cap - 1) <= len(ok) <= limit
    for r in refused:
        assert assert_problem(r, 429)["scope"] == "key"
        assert r.headers["ratelimit-remaining"] == "0" and int(r.headers["retry-after"]) >= 1
