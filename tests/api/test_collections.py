"""Collections API: create, list (keyset pages), get, rename, delete; roles and tenancy."""

from __future__ import annotations

import base64

import pytest

from tests.api.helpers import assert_problem, bearer, create_key


async def _create(client, headers, name, **extra):
    return await client.post("/v1/collections", json={"name": name, **extra}, headers=headers)


async def test_create_get_and_duplicate_name(client, make_tenant):
    t = await make_tenant()
    r = await _create(client, t.headers, "handbooks", description="HR handbooks")
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["name"] == "handbooks" and created["description"] == "HR handbooks"
    assert created["tenant_id"] == str(t.id)
    assert created["version"] >= 1

    got = await client.get(f"/v1/collections/{created['id']}", headers=t.headers)
    assert got.status_code == 200
    assert got.json() == created

    body = assert_problem(await _create(client, t.headers, "handbooks"), 409)
    assert "handbooks" in body["detail"]
    # Names are unique per tenant only.
    other = await make_tenant()
    assert (await _create(client, other.headers, "handbooks")).status_code == 201


@pytest.mark.parametrize("body", [{}, {"name": ""}, {"name": "x" * 201}, {"name": "ok", "colour": "red"},
                                  {"name": 5}])
async def test_create_rejects_invalid_bodies(client, make_tenant, body):
    t = await make_tenant()
    r = await client.post("/v1/collections", json=body, headers=t.headers)
    assert_problem(r, 422)
    assert (await client.get("/v1/collections", headers=t.headers)).json()["items"] == []


async def test_list_pages_by_name_without_gaps_or_duplicates(client, make_tenant):
    t = await make_tenant()
    names = [f"c{i:02d}" for i in range(7)]
    for name in reversed(names):  # creation order differs from name order
        assert (await _create(client, t.headers, name)).status_code == 201

    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        r = await client.get("/v1/collections", params=params, headers=t.headers)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= 3
        seen += [c["name"] for c in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == names
    assert pages == 3

    everything = (await client.get("/v1/collections", params={"limit": 7}, headers=t.headers)).json()
    assert [c["name"] for c in everything["items"]] == names and everything["next_cursor"] is None


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 201}, {"limit": "many"}])
async def test_list_rejects_bad_limits(client, make_tenant, params):
    t = await make_tenant()
    r = await client.get("/v1/collections", params=params, headers=t.headers)
    assert_problem(r, 422)


@pytest.mark.parametrize("cursor", ["%%%not-a-cursor", base64.urlsafe_b64encode(b"[]").decode(),
                                    base64.urlsafe_b64encode(b'{"a": 1}').decode()])
async def test_list_rejects_invalid_cursors(client, make_tenant, cursor):
    t = await make_tenant()
    r = await client.get("/v1/collections", params={"cursor": cursor}, headers=t.headers)
    assert_problem(r, 400)


async def test_rename_and_describe(client, make_tenant):
    t = await make_tenant()
    cid = (await _create(client, t.headers, "drafts", description="keep")).json()["id"]
    await _create(client, t.headers, "taken")

    r = await client.patch(f"/v1/collections/{cid}", json={"name": "final"}, headers=t.headers)
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "final" and r.json()["description"] == "keep"  # untouched field stays

    r = await client.patch(f"/v1/collections/{cid}", json={"description": "reviewed"}, headers=t.headers)
    assert r.status_code == 200 and r.json()["name"] == "final" and r.json()["description"] == "reviewed"

    body = assert_problem(await client.patch(f"/v1/collections/{cid}", json={"name": "taken"},
                                             headers=t.headers), 409)
    assert "taken" in body["detail"]
    assert_problem(await client.patch(f"/v1/collections/{cid}", json={"nmae": "typo"}, headers=t.headers), 422)
    assert_problem(await client.patch(f"/v1/collections/{cid}", json={"name": None}, headers=t.headers), 422)
    assert_problem(await client.patch(f"/v1/collections/{cid}", json={"name": ""}, headers=t.headers), 422)
    # None of the rejected changes was applied.
    current = (await client.get(f"/v1/collections/{cid}", headers=t.headers)).json()
    assert (current["name"], current["description"]) == ("final", "reviewed")

    missing = "00000000-0000-0000-0000-000000000000"
    assert_problem(await client.patch(f"/v1/collections/{missing}", json={"name": "x"}, headers=t.headers), 404)


async def test_delete_then_gone(client, make_tenant):
    t = await make_tenant()
    cid = (await _create(client, t.headers, "temporary")).json()["id"]
    r = await client.delete(f"/v1/collections/{cid}", headers=t.headers)
    assert r.status_code == 204
    assert_problem(await client.get(f"/v1/collections/{cid}", headers=t.headers), 404)
    assert_problem(await client.delete(f"/v1/collections/{cid}", headers=t.headers), 404)
    assert (await client.get("/v1/collections", headers=t.headers)).json()["items"] == []
    # The name is free again.
    assert (await _create(client, t.headers, "temporary")).status_code == 201


async def test_roles(client, make_tenant):
    t = await make_tenant()
    cid = (await _create(client, t.headers, "shared")).json()["id"]
    reader = bearer((await create_key(client, t.headers, "reader"))["key"])
    member = bearer((await create_key(client, t.headers, "member"))["key"])

    listed = await client.get("/v1/collections", headers=reader)
    assert listed.status_code == 200 and [c["id"] for c in listed.json()["items"]] == [cid]
    assert (await client.get(f"/v1/collections/{cid}", headers=reader)).status_code == 200
    assert_problem(await _create(client, reader, "by-reader"), 403)
    assert_problem(await client.patch(f"/v1/collections/{cid}", json={"name": "r"}, headers=reader), 403)
    assert_problem(await client.delete(f"/v1/collections/{cid}", headers=reader), 403)

    assert (await _create(client, member, "by-member")).status_code == 201
    assert (await client.patch(f"/v1/collections/{cid}", json={"description": "m"}, headers=member)).status_code == 200
    assert_problem(await client.delete(f"/v1/collections/{cid}", headers=member), 403)
    assert (await client.get(f"/v1/collections/{cid}", headers=t.headers)).status_code == 200  # still there
    assert (await client.delete(f"/v1/collections/{cid}", headers=t.headers)).status_code == 204


async def test_other_tenants_collections_are_invisible(client, make_tenant):
    a, b = await make_tenant(), await make_tenant()
    cid = (await _create(client, a.headers, "private")).json()["id"]
    assert (await client.get("/v1/collections", headers=b.headers)).json()["items"] == []
    assert_problem(await client.get(f"/v1/collections/{cid}", headers=b.headers), 404)
    assert_problem(await client.patch(f"/v1/collections/{cid}", json={"name": "mine"}, headers=b.headers), 404)
    assert_problem(await client.delete(f"/v1/collections/{cid}", headers=b.headers), 404)
    assert (await client.get(f"/v1/collections/{cid}", headers=a.headers)).json()["name"] == "private"
