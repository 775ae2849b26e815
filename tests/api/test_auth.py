"""Authentication (API keys), role guards and the admin endpoints for tenants, users, keys."""

from __future__ import annotations

import hashlib
import uuid
from contextlib import asynccontextmanager

import httpx
import msgspec
import pytest
from redis.asyncio import Redis

from api.app import create_app
from api.auth import client_address, parse_proxies
from api.pagination import encode_cursor
from storage.caches.guard import RedisGuard
from storage.caches.principals import NEGATIVE_TTL_S, PrincipalCache
from storage.repositories.api_keys import generate_key
from tests.api.helpers import assert_problem, bearer, create_key

UNKNOWN_KEY = "qk_AAAAAAAA_" + "A" * 43


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Basic x"},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer a b"},
    {"Authorization": "Bearer not-a-quarry-key"},
    {"Authorization": f"Bearer {UNKNOWN_KEY}"},
    {"Authorization": "Bearer qk_" + "x" * 500},
])
async def test_unauthenticated_requests_get_401(client, headers):
    r = await client.get("/v1/me", headers=headers)
    assert_problem(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")


async def test_revoked_key_stops_working_at_once(client, make_tenant):
    t = await make_tenant()
    new = await create_key(client, t.headers, "member")
    assert (await client.get("/v1/me", headers=bearer(new["key"]))).status_code == 200
    r = await client.delete(f"/v1/admin/keys/{new['api_key']['id']}", headers=t.headers)
    assert r.status_code == 204, r.text
    r = await client.get("/v1/me", headers=bearer(new["key"]))
    assert_problem(r, 401)
    assert "www-authenticate" in r.headers


async def test_expired_key_is_rejected(client, make_tenant, owner_pool):
    t = await make_tenant()
    new = await create_key(client, t.headers, "reader")
    async with owner_pool.acquire() as conn:
        await conn.execute("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1",
                           new["api_key"]["id"])
    assert_problem(await client.get("/v1/me", headers=bearer(new["key"])), 401)


async def test_me_describes_the_key(client, make_tenant):
    t = await make_tenant()
    new = await create_key(client, t.headers, "reader", name="ci")
    r = await client.get("/v1/me", headers=bearer(new["key"]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tenant_id"] == str(t.id) and body["role"] == "reader"
    assert body["prefix"] == new["key"][:11] == new["api_key"]["prefix"]
    assert body["tenant_name"] == t.tenant.name and body["is_operator"] is False


@pytest.mark.parametrize("role", ["reader", "member"])
@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/admin/keys", {"role": "admin"}),
    ("GET", "/v1/admin/keys", None),
    ("POST", "/v1/admin/users", {"email": "x@example.com", "role": "admin"}),
    ("GET", "/v1/admin/users", None),
    ("GET", "/v1/admin/tenants", None),
])
async def test_non_admins_are_forbidden_admin_endpoints(client, make_tenant, role, method, path, body):
    t = await make_tenant(operator=True)  # even in an operator tenant
    key = (await create_key(client, t.headers, role))["key"]
    r = await client.request(method, path, json=body, headers=bearer(key))
    assert_problem(r, 403)


async def test_non_operator_admin_cannot_manage_tenants(client, make_tenant):
    t = await make_tenant()
    assert_problem(await client.post("/v1/admin/tenants", json={"name": "nope-x"}, headers=t.headers), 403)
    assert_problem(await client.get("/v1/admin/tenants", headers=t.headers), 403)


async def test_operator_creates_a_tenant_with_a_working_admin_key(client, make_tenant):
    op = await make_tenant(operator=True)
    name = f"new-{op.tenant.name}"
    r = await client.post("/v1/admin/tenants", json={"name": name}, headers=op.headers)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["tenant"]["name"] == name and body["tenant"]["is_operator"] is False
    key = body["admin_key"]["key"]
    me = await client.get("/v1/me", headers=bearer(key))
    assert me.status_code == 200, me.text
    assert me.json()["tenant_id"] == body["tenant"]["id"] and me.json()["role"] == "admin"
    # ...and that key administers its own tenant only, not the platform.
    assert (await client.get("/v1/admin/users", headers=bearer(key))).status_code == 200
    assert_problem(await client.get("/v1/admin/tenants", headers=bearer(key)), 403)
    # Duplicate and invalid names.
    for bad, status in [(name, 409), ("Bad Name!", 422), ("-dash-first", 422), ("x" * 64, 422), ("", 422)]:
        r = await client.post("/v1/admin/tenants", json={"name": bad}, headers=op.headers)
        assert_problem(r, status)


async def test_operator_lists_tenants_with_pagination(client, make_tenant):
    op = await make_tenant(operator=True)
    others = [await make_tenant() for _ in range(2)]
    r = await client.get("/v1/admin/tenants", params={"limit": 1}, headers=op.headers)
    assert r.status_code == 200, r.text
    page = r.json()
    assert len(page["items"]) == 1 and page["next_cursor"]
    names, cursor = [page["items"][0]["name"]], page["next_cursor"]
    while cursor:
        r = await client.get("/v1/admin/tenants", params={"limit": 2, "cursor": cursor}, headers=op.headers)
        assert r.status_code == 200, r.text
        names += [item["name"] for item in r.json()["items"]]
        cursor = r.json()["next_cursor"]
    assert names == sorted(set(names))  # ordered, no repeats
    assert {op.tenant.name, *(o.tenant.name for o in others)} <= set(names)


BAD_CURSORS = ["!!!", "e30", encode_cursor([]), encode_cursor([None]), encode_cursor([1])]


@pytest.mark.parametrize("cursor", BAD_CURSORS)
async def test_bad_tenant_cursor_is_a_client_error(client, make_tenant, cursor):
    op = await make_tenant(operator=True)
    r = await client.get("/v1/admin/tenants", params={"cursor": cursor}, headers=op.headers)
    assert_problem(r, 400)


async def test_keys_are_stored_hashed_and_never_listed(client, make_tenant, owner_pool):
    t = await make_tenant()
    new = await create_key(client, t.headers, "member", name="hashed")
    key = new["key"]
    assert key.startswith("qk_") and len(key) > 40
    async with owner_pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM api_keys WHERE id = $1", new["api_key"]["id"])
        dump = await conn.fetchval("SELECT string_agg(a::text, '') FROM api_keys a")
    assert bytes(row["key_hash"]) == hashlib.sha256(key.encode()).digest()
    assert key not in dump and key[11:] not in dump
    r = await client.get("/v1/admin/keys", params={"include_revoked": "true"}, headers=t.headers)
    assert r.status_code == 200, r.text
    assert key not in r.text and t.admin_key not in r.text
    for item in r.json()["items"]:
        assert not {"key", "key_hash"} & item.keys()
    assert new["api_key"]["id"] in {item["id"] for item in r.json()["items"]}


async def test_admin_cannot_revoke_another_tenants_key(client, make_tenant):
    a, b = await make_tenant(), await make_tenant()
    b_key = await create_key(client, b.headers, "reader")
    r = await client.delete(f"/v1/admin/keys/{b_key['api_key']['id']}", headers=a.headers)
    assert_problem(r, 404)
    assert (await client.get("/v1/me", headers=bearer(b_key["key"]))).status_code == 200
    listed = await client.get("/v1/admin/keys", headers=a.headers)
    assert b_key["api_key"]["id"] not in listed.text


async def test_key_bound_to_a_user(client, make_tenant):
    a, b = await make_tenant(), await make_tenant()
    user = (await client.post("/v1/admin/users", json={"email": "u@example.com", "role": "member"},
                              headers=a.headers)).json()
    new = await create_key(client, a.headers, "member", user_id=user["id"])
    assert (await client.get("/v1/me", headers=bearer(new["key"]))).json()["user_id"] == user["id"]
    # Another tenant's user, or not a UUID at all: 422.
    for user_id in [user["id"], "not-a-uuid"]:
        body = {"role": "member", "user_id": user_id}
        assert_problem(await client.post("/v1/admin/keys", json=body, headers=b.headers), 422)


async def test_users_create_conflict_and_pagination(client, make_tenant):
    t = await make_tenant()
    emails = [f"user{i}@example.com" for i in range(5)]
    for email in emails:
        r = await client.post("/v1/admin/users", json={"email": email, "role": "reader", "name": "U"},
                              headers=t.headers)
        assert r.status_code == 201, r.text
        assert r.json()["email"] == email and r.json()["tenant_id"] == str(t.id)
    r = await client.post("/v1/admin/users", json={"email": emails[0], "role": "admin"}, headers=t.headers)
    assert_problem(r, 409)
    assert_problem(await client.post("/v1/admin/users", json={"email": "nope", "role": "admin"},
                                     headers=t.headers), 422)
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        r = await client.get("/v1/admin/users", params=params, headers=t.headers)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= 2
        seen += [u["email"] for u in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    assert seen == emails  # creation order, each once
    other = await make_tenant()
    assert (await client.get("/v1/admin/users", headers=other.headers)).json()["items"] == []
    naive = encode_cursor(["2020-01-01T00:00:00", "00000000-0000-0000-0000-000000000000"])
    r = await client.get("/v1/admin/users", params={"cursor": naive}, headers=t.headers)
    assert r.status_code in (200, 400), r.text
    for bad in ["!!!", encode_cursor(["x"]), encode_cursor([1, 2])]:
        r = await client.get("/v1/admin/users", params={"cursor": bad}, headers=t.headers)
        assert_problem(r, 400)


# --- refusing is cheap (issue 13) -------------------------------------------------------------



MALFORMED = [
    "qk_AAAAAAAA_" + "A" * 42,  # one short
    "qk_AAAAAAAA_" + "A" * 44,  # one long
    "qk_AAAA!AAA_" + "A" * 43,  # outside the id alphabet
    "qk_AAAAAAAA_" + "A" * 42 + "+",  # outside the URL-safe alphabet
    "qk_AAAAAAAA-" + "A" * 43,
    "QK_AAAAAAAA_" + "A" * 43,
    "sk_AAAAAAAA_" + "A" * 43,
    "qk_AAAAAAAA_" + "A" * 42 + "\u00e9",
    "not-a-quarry-key",
]


def _unknown_key() -> str:
    return generate_key()[0]  # well-formed, and certainly not stored


@asynccontextmanager
async def _app(settings):
    """The app on the test's loop (lifespan included) and a factory of clients, each with its own
    socket peer address, as if requests came from different machines."""
    app = create_app(settings)
    clients: list[httpx.AsyncClient] = []

    def client_from(peer: str) -> httpx.AsyncClient:
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(peer, 40000)),
                              base_url="http://testserver.local")
        clients.append(c)
        return c

    async with app.lifespan():
        try:
            yield app, client_from
        finally:
            for c in clients:
                await c.aclose()


def _peer() -> str:
    """A fresh documentation address per test, so counters of earlier runs never interfere."""
    n = uuid.uuid4().int
    return f"198.51.{n % 250}.{(n >> 8) % 250 + 1}"


def _count_lookups(monkeypatch) -> dict[str, int]:
    """Counts every Redis call (through the guard) and every Postgres key lookup."""
    counts = {"redis": 0, "postgres": 0}
    real_call, real_fetch = RedisGuard.call, PrincipalCache.fetch

    async def call(self, fn):
        counts["redis"] += 1
        return await real_call(self, fn)

    async def fetch(self, key):
        counts["postgres"] += 1
        return await real_fetch(self, key)

    monkeypatch.setattr(RedisGuard, "call", call)
    monkeypatch.setattr(PrincipalCache, "fetch", fetch)
    return counts


async def test_malformed_bearers_touch_neither_redis_nor_postgres(settings, monkeypatch):
    async with _app(settings) as (_, client_from):
        client = client_from(_peer())
        counts = _count_lookups(monkeypatch)
        for key in MALFORMED:
            r = await client.get("/v1/me", headers={"Authorization": f"Bearer {key}".encode("latin-1")})
            assert_problem(r, 401)
            assert r.headers["www-authenticate"].startswith("Bearer")
        assert counts == {"redis": 0, "postgres": 0}
        # The counters do see a well-formed key's lookup (so the zero above means something).
        assert_problem(await client.get("/v1/me", headers=bearer(_unknown_key())), 401)
        assert counts["postgres"] == 1 and counts["redis"] >= 1


async def test_malformed_bearers_get_401_even_with_redis_and_postgres_down(settings, monkeypatch):
    async with _app(settings) as (app, client_from):
        client = client_from(_peer())

        async def broken(*_args, **_kwargs):
            raise AssertionError("no I/O may happen for a malformed key")

        monkeypatch.setattr(RedisGuard, "call", broken)
        monkeypatch.setattr(PrincipalCache, "fetch", broken)
        monkeypatch.setattr(app.state.pool, "acquire", broken)
        for key in MALFORMED:
            assert_problem(await client.get("/v1/me", headers={"Authorization": f"Bearer {key}".encode("latin-1")}),
                           401)


async def test_unknown_keys_are_remembered_across_processes(settings, monkeypatch, make_tenant):
    """Two app instances stand for two API processes: a miss found by one is a Redis hit for the
    other, and a key created afterwards works at once everywhere."""
    tenant = await make_tenant()
    peer = _peer()
    async with _app(settings) as (_, one_from), _app(settings) as (_, two_from):
        one, two = one_from(peer), two_from(peer)
        counts = _count_lookups(monkeypatch)
        unknown = bearer(_unknown_key())
        assert_problem(await one.get("/v1/me", headers=unknown), 401)
        assert counts["postgres"] == 1
        assert_problem(await two.get("/v1/me", headers=unknown), 401)  # the other process: from Redis
        assert_problem(await one.get("/v1/me", headers=unknown), 401)  # this one: from its local tier
        assert counts["postgres"] == 1
        redis = Redis.from_url(settings.redis_url)
        try:
            digest = hashlib.sha256(unknown["Authorization"][7:].encode()).hexdigest()
            ttl = await redis.ttl(f"quarry:cache:principal:{digest}")
        finally:
            await redis.aclose()
        assert 0 < ttl <= NEGATIVE_TTL_S
        new = await create_key(one, tenant.headers, "reader")
        for c in (one, two):
            assert (await c.get("/v1/me", headers=bearer(new["key"]))).status_code == 200


async def test_repeated_failures_from_one_address_get_429_before_any_lookup(settings, monkeypatch, make_tenant):
    tenant = await make_tenant()
    limited = msgspec.structs.replace(settings, auth_failures_per_minute=3, trusted_proxies="10.0.0.0/8",
                                      redis_timeout_ms=3000)
    attacker, neighbour = _peer(), _peer()
    async with _app(limited) as (_, one_from), _app(limited) as (_, two_from):
        via_proxy = one_from("10.1.2.3")
        valid = (await create_key(via_proxy, tenant.headers, "reader"))["key"]
        assert (await via_proxy.get("/v1/me", headers=bearer(valid) | {"X-Forwarded-For": attacker})).status_code == 200
        counts = _count_lookups(monkeypatch)
        for _ in range(3):
            r = await via_proxy.get("/v1/me", headers=bearer(_unknown_key()) | {"X-Forwarded-For": attacker})
            assert_problem(r, 401)
        assert counts["postgres"] == 3
        refused = await via_proxy.get("/v1/me", headers=bearer(_unknown_key()) | {"X-Forwarded-For": attacker})
        body = assert_problem(refused, 429)
        assert body["scope"] == "address" and 1 <= int(refused.headers["retry-after"]) <= 60
        assert counts["postgres"] == 3  # refused before the lookup
        redis_calls = counts["redis"]
        again = await via_proxy.get("/v1/me", headers=bearer(_unknown_key()) | {"X-Forwarded-For": attacker})
        assert_problem(again, 429)
        assert counts["redis"] == redis_calls  # this process remembers the block: no Redis call either
        # Another process knows too (Redis), and also refuses without a lookup.
        other = two_from("10.9.9.9")
        assert_problem(await other.get("/v1/me", headers=bearer(_unknown_key()) | {"X-Forwarded-For": attacker}), 429)
        assert counts["postgres"] == 3
        # A key this process already holds still works from that address (no lookup needed).
        assert (await via_proxy.get("/v1/me", headers=bearer(valid) | {"X-Forwarded-For": attacker})).status_code == 200
        # Another client behind the same proxy is not affected.
        r = await via_proxy.get("/v1/me", headers=bearer(_unknown_key()) | {"X-Forwarded-For": neighbour})
        assert_problem(r, 401)
        # X-Forwarded-For from a peer that is not a trusted proxy is ignored: it cannot frame the
        # attacker's address, nor escape its own count.
        direct = one_from(neighbour)
        assert_problem(await direct.get("/v1/me", headers=bearer(_unknown_key()) | {"X-Forwarded-For": attacker}), 401)
        # Malformed keys are still refused with 401 at no cost (they never reach the counter).
        assert_problem(await via_proxy.get("/v1/me", headers=bearer("qk_short") | {"X-Forwarded-For": attacker}), 401)


@pytest.mark.parametrize(("peer", "forwarded", "trusted", "expected"), [
    ("203.0.113.5", None, "", "203.0.113.5"),
    ("203.0.113.5", "198.51.100.1", "", "203.0.113.5"),  # no trusted proxy: the header is ignored
    ("10.0.0.2", "198.51.100.1", "10.0.0.0/8", "198.51.100.1"),
    ("10.0.0.2", "6.6.6.6, 198.51.100.1, 10.0.0.7", "10.0.0.0/8", "198.51.100.1"),  # spoofed left part ignored
    ("10.0.0.2", "garbage, 10.0.0.9", "10.0.0.0/8", "10.0.0.9"),
    ("10.0.0.2", None, "10.0.0.0/8", "10.0.0.2"),
    ("10.0.0.2", "6.6.6.6," * 2000 + " 198.51.100.1", "10.0.0.0/8", "198.51.100.1"),  # padding cannot push it out
    ("2001:db8:1:2:3:4:5:6", None, "", "2001:db8:1:2::/64"),  # IPv6: per /64
    ("::ffff:203.0.113.5", None, "", "203.0.113.5"),
    ("testclient", None, "", "unknown"),
])
def test_client_address(peer, forwarded, trusted, expected):
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    assert client_address({"client": (peer, 1), "headers": headers}, parse_proxies(trusted)) == expected


async def test_a_flood_of_unknown_keys_costs_postgres_one_query_per_key(settings, monkeypatch):
    """The same wrong key again and again: one Postgres query, then the remembered miss."""
    async with _app(msgspec.structs.replace(settings, auth_failures_per_minute=0)) as (_, client_from):
        client = client_from(_peer())
        counts = _count_lookups(monkeypatch)
        key = bearer(_unknown_key())
        for _ in range(20):
            assert_problem(await client.get("/v1/me", headers=key), 401)
        assert counts["postgres"] == 1
