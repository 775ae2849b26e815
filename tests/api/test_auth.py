"""Authentication (API keys), role guards and the admin endpoints for tenants, users, keys."""

from __future__ import annotations

import hashlib

import pytest

from api.pagination import encode_cursor
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
