"""Sources API: CRUD, per-kind config validation (422 naming the field), secrets masked,
run now (queued for Dagster) and run history."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from cryptography.fernet import Fernet

from core.secrets import SecretBox, open_config
from tests.api.helpers import assert_problem, bearer, create_key
from tests.ingest_helpers import new_collection

SECRET_KEY = Fernet.generate_key().decode()


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    root = tmp_path / "allowed"
    (root / "docs").mkdir(parents=True)
    return root


def tenant_folder(roots: Path, tenant) -> Path:
    """`<root>/<tenant id>`: the only folder the tenant's folder sources may read."""
    path = roots / str(tenant.id)
    (path / "docs").mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
async def api(app_client, settings, roots):
    custom = msgspec.structs.replace(settings, connector_folder_roots=str(roots),
                                     connector_allow_private="127.0.0.1:9", secret_key=SECRET_KEY)
    async with app_client(custom) as client:
        yield client


async def test_crud_cycle(api, make_tenant, roots):
    tenant = await make_tenant()
    h = tenant.headers
    collection_id = await new_collection(api, h)
    body = {"name": "handbook", "kind": "folder", "collection_id": collection_id,
            "config": {"path": str(tenant_folder(roots, tenant) / "docs"), "include": ["**/*.md"]},
            "schedule": "*/15 * * * *"}
    r = await api.post("/v1/sources", json=body, headers=h)
    assert r.status_code == 201, r.text
    source = r.json()
    assert source["kind"] == "folder" and source["enabled"] is True and source["last_run"] is None
    assert source["next_run_at"] is not None and source["config"]["include"] == ["**/*.md"]
    sid = source["id"]

    assert_problem(await api.post("/v1/sources", json=body, headers=h), 409)  # same name

    r = await api.get("/v1/sources", headers=h)
    assert [s["id"] for s in r.json()["items"]] == [sid]
    r = await api.patch(f"/v1/sources/{sid}", json={"schedule": None, "name": "handbook-2"}, headers=h)
    assert r.status_code == 200 and r.json()["schedule"] is None and r.json()["next_run_at"] is None
    assert r.json()["name"] == "handbook-2"

    r = await api.post(f"/v1/sources/{sid}/disable", headers=h)
    assert r.status_code == 200 and r.json()["enabled"] is False
    assert_problem(await api.post(f"/v1/sources/{sid}/sync", headers=h), 409)
    r = await api.post(f"/v1/sources/{sid}/enable", headers=h)
    assert r.json()["enabled"] is True

    r = await api.post(f"/v1/sources/{sid}/sync", headers=h)
    assert r.status_code == 202, r.text
    run = r.json()["run"]
    assert run["status"] == "queued" and run["trigger"] == "api" and r.json()["created"] is True
    again = await api.post(f"/v1/sources/{sid}/sync", headers=h)
    assert again.json()["run"]["id"] == run["id"] and again.json()["created"] is False

    r = await api.get(f"/v1/sources/{sid}/runs", headers=h)
    assert [x["id"] for x in r.json()["items"]] == [run["id"]]
    assert (await api.get(f"/v1/sources/{sid}/runs/{run['id']}", headers=h)).json()["status"] == "queued"
    assert (await api.get(f"/v1/sources/{sid}", headers=h)).json()["last_run"]["id"] == run["id"]

    r = await api.delete(f"/v1/sources/{sid}", headers=h)
    assert r.status_code == 204
    assert_problem(await api.get(f"/v1/sources/{sid}", headers=h), 404)


@pytest.mark.parametrize(("kind", "config", "field"), [
    ("website", {"start_url": "https://example.com", "max_depth": "deep"}, "config.max_depth"),
    ("website", {"start_url": "https://example.com", "max_pages": 0}, "config.max_pages"),
    ("website", {"start_url": "ftp://example.com"}, "config.start_url"),
    ("website", {}, "config.start_url"),
    ("website", {"start_url": "http://10.0.0.1/"}, "config.start_url"),
    ("website", {"start_url": "http://169.254.169.254/latest/meta-data"}, "config.start_url"),
    ("website", {"start_url": "http://localhost:8080/"}, "config.start_url"),
    ("website", {"start_url": "https://example.com", "depth": 3}, "config.depth"),
    ("folder", {"include": ["*.md"]}, "config.path"),
    ("folder", {"path": "relative/dir"}, "config.path"),
    ("folder", {"path": "/etc"}, "config.path"),
    ("folder", {"path": "{root}/docs", "include": "*.md"}, "config.include"),
    ("s3", {"bucket": "Bad_Bucket!"}, "config.bucket"),
    ("s3", {"bucket": "docs", "access_key_id": "AKIA123"}, "config.secret_access_key"),
    ("s3", {"bucket": "docs", "endpoint_url": "http://127.0.0.2:9000"}, "config.endpoint_url"),
])
async def test_bad_config_is_422_naming_the_field(api, make_tenant, roots, kind, config, field):
    tenant = await make_tenant()
    collection_id = await new_collection(api, tenant.headers)
    config = {k: (v.replace("{root}", str(roots)) if isinstance(v, str) else v) for k, v in config.items()}
    r = await api.post("/v1/sources", json={"name": "x", "kind": kind, "collection_id": collection_id,
                                            "config": config}, headers=tenant.headers)
    problem = assert_problem(r, 422)
    assert problem["detail"].startswith(field + ":"), problem
    assert problem["errors"][0]["key"] == field


async def test_allowed_private_endpoint_is_accepted(api, make_tenant):
    tenant = await make_tenant()
    collection_id = await new_collection(api, tenant.headers)
    r = await api.post("/v1/sources", json={"name": "w", "kind": "website", "collection_id": collection_id,
                                            "config": {"start_url": "http://127.0.0.1:9/"}}, headers=tenant.headers)
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("schedule", ["every hour", "61 * * * *", "* * * *", "0 0 30 2 * *"])
async def test_bad_schedule(api, make_tenant, roots, schedule):
    tenant = await make_tenant()
    collection_id = await new_collection(api, tenant.headers)
    r = await api.post("/v1/sources", json={
        "name": "x", "kind": "folder", "collection_id": collection_id, "config": {"path": str(roots)},
        "schedule": schedule}, headers=tenant.headers)
    assert assert_problem(r, 422)["detail"].startswith("schedule:")


async def test_unknown_collection_and_kind(api, make_tenant, roots):
    tenant = await make_tenant()
    tenant_folder(roots, tenant)
    r = await api.post("/v1/sources", json={"name": "x", "kind": "folder", "config": {"path": "docs"},
                                            "collection_id": "00000000-0000-0000-0000-000000000001"},
                       headers=tenant.headers)
    assert_problem(r, 422)
    collection_id = await new_collection(api, tenant.headers)
    r = await api.post("/v1/sources", json={"name": "x", "kind": "ftp", "config": {},
                                            "collection_id": collection_id}, headers=tenant.headers)
    assert_problem(r, 422)


KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


async def _raw_config(owner_pool, source_id) -> str:
    async with owner_pool.acquire() as conn:
        return await conn.fetchval("SELECT config::text FROM sources WHERE id = $1", source_id)


async def test_s3_credentials_are_encrypted_at_rest_and_masked(api, make_tenant, owner_pool):
    tenant = await make_tenant()
    collection_id = await new_collection(api, tenant.headers)
    r = await api.post("/v1/sources", json={
        "name": "bucket", "kind": "s3", "collection_id": collection_id,
        "config": {"bucket": "docs", "access_key_id": KEY_ID, "secret_access_key": SECRET}},
        headers=tenant.headers)
    assert r.status_code == 201, r.text
    shown = r.json()["config"]
    assert shown["secret_access_key"] == "********" and shown["access_key_id"] == "AKIA\u2026PLE"
    sid = r.json()["id"]
    reader = bearer((await create_key(api, tenant.headers, "reader"))["key"])
    answers = [r, await api.get("/v1/sources", headers=reader), await api.get(f"/v1/sources/{sid}", headers=reader)]
    # PATCH with the config as GET shows it keeps both stored credentials.
    r = await api.patch(f"/v1/sources/{sid}", json={"config": {**shown, "prefix": "handbook/"}}, headers=tenant.headers)
    assert r.status_code == 200, r.text
    answers.append(r)
    for answer in answers:
        assert SECRET not in answer.text and KEY_ID not in answer.text and SECRET[-4:] not in answer.text
    # At rest: neither the secret nor the key id is in the row, only Fernet tokens...
    raw = await _raw_config(owner_pool, sid)
    assert SECRET not in raw and KEY_ID not in raw and SECRET[-4:] not in raw and '"fernet"' in raw
    # ...which open, with the key, to exactly what was sent (and what the connector will get).
    async with owner_pool.acquire() as conn:
        stored = await conn.fetchval("SELECT config FROM sources WHERE id = $1", sid)
    opened = open_config(stored, SecretBox(SECRET_KEY))
    assert (opened["access_key_id"], opened["secret_access_key"], opened["prefix"]) == (KEY_ID, SECRET, "handbook/")
    # A new secret replaces the stored one; the key id sent masked is kept.
    r = await api.patch(f"/v1/sources/{sid}", json={"config": {**shown, "secret_access_key": "n" * 40}},
                        headers=tenant.headers)
    assert r.status_code == 200, r.text
    async with owner_pool.acquire() as conn:
        stored = await conn.fetchval("SELECT config FROM sources WHERE id = $1", sid)
    opened = open_config(stored, SecretBox(SECRET_KEY))
    assert (opened["access_key_id"], opened["secret_access_key"]) == (KEY_ID, "n" * 40)


async def test_a_sealed_value_cannot_be_smuggled_in(api, make_tenant):
    """Only strings are accepted for credentials: a client cannot store a token of its choosing
    (say, one copied from another source) for the sync to decrypt."""
    tenant = await make_tenant()
    collection_id = await new_collection(api, tenant.headers)
    sealed = SecretBox(SECRET_KEY).seal("stolen")
    r = await api.post("/v1/sources", json={
        "name": "b", "kind": "s3", "collection_id": collection_id,
        "config": {"bucket": "docs", "access_key_id": KEY_ID, "secret_access_key": sealed}}, headers=tenant.headers)
    assert assert_problem(r, 422)["errors"][0]["key"] == "config.secret_access_key"


async def test_without_a_secret_key_credentials_are_refused(app_client, settings, make_tenant, owner_pool):
    tenant = await make_tenant()
    async with app_client(msgspec.structs.replace(settings, secret_key="")) as client:
        collection_id = await new_collection(client, tenant.headers)
        r = await client.post("/v1/sources", json={
            "name": "creds", "kind": "s3", "collection_id": collection_id,
            "config": {"bucket": "docs", "access_key_id": KEY_ID, "secret_access_key": SECRET}},
            headers=tenant.headers)
        body = assert_problem(r, 422)
        assert "QUARRY_SECRET_KEY" in body["detail"] and SECRET not in r.text and KEY_ID not in r.text
        async with owner_pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM sources WHERE tenant_id = $1", tenant.id) == 0
        # A public bucket needs no credentials, and so no key.
        r = await client.post("/v1/sources", json={"name": "public", "kind": "s3", "collection_id": collection_id,
                                                   "config": {"bucket": "docs"}}, headers=tenant.headers)
        assert r.status_code == 201, r.text


async def test_rotation_re_encrypts_with_the_first_key(api, make_tenant, owner_pool, settings, admin_url):
    from ops.sources import rotate_secrets

    tenant = await make_tenant()
    collection_id = await new_collection(api, tenant.headers)
    r = await api.post("/v1/sources", json={
        "name": "rot", "kind": "s3", "collection_id": collection_id,
        "config": {"bucket": "docs", "access_key_id": KEY_ID, "secret_access_key": SECRET}}, headers=tenant.headers)
    sid = r.json()["id"]
    before = await _raw_config(owner_pool, sid)
    new_key = Fernet.generate_key().decode()
    rotated = msgspec.structs.replace(settings, secret_key=f"{new_key},{SECRET_KEY}")
    counts = await rotate_secrets(rotated, admin_url)
    assert counts["sources"] >= 1 and counts["secrets"] >= 2
    after = await _raw_config(owner_pool, sid)
    assert after != before and SECRET not in after
    async with owner_pool.acquire() as conn:
        stored = await conn.fetchval("SELECT config FROM sources WHERE id = $1", sid)
    assert open_config(stored, SecretBox(new_key))["secret_access_key"] == SECRET  # the old key can go now
    with pytest.raises(ValueError, match="cannot be decrypted"):
        open_config(stored, SecretBox(SECRET_KEY))


async def test_roles_and_tenant_isolation(api, make_tenant, roots):
    owner, other = await make_tenant(), await make_tenant()
    tenant_folder(roots, owner)
    collection_id = await new_collection(api, owner.headers)
    r = await api.post("/v1/sources", json={"name": "x", "kind": "folder", "collection_id": collection_id,
                                            "config": {"path": "docs"}}, headers=owner.headers)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    reader = await create_key(api, owner.headers, "reader")
    assert_problem(await api.post("/v1/sources", json={}, headers=bearer(reader["key"])), 403)
    assert_problem(await api.post(f"/v1/sources/{sid}/sync", headers=bearer(reader["key"])), 403)
    assert (await api.get(f"/v1/sources/{sid}/runs", headers=bearer(reader["key"]))).status_code == 200
    for method, path in [("get", f"/v1/sources/{sid}"), ("get", f"/v1/sources/{sid}/runs"),
                         ("post", f"/v1/sources/{sid}/sync"), ("delete", f"/v1/sources/{sid}")]:
        assert_problem(await getattr(api, method)(path, headers=other.headers), 404)
    # Another tenant's collection cannot be targeted either.
    other_collection = await new_collection(api, other.headers)
    r = await api.patch(f"/v1/sources/{sid}", json={"collection_id": other_collection}, headers=owner.headers)
    assert_problem(r, 422)


async def test_folder_paths_of_other_tenants_are_422(api, make_tenant, roots):
    victim, attacker = await make_tenant(), await make_tenant()
    theirs, mine = tenant_folder(roots, victim), tenant_folder(roots, attacker)
    (mine / "link").symlink_to(theirs)
    collection_id = await new_collection(api, attacker.headers)
    for path in (f"../{victim.id}", f"docs/../../{victim.id}/docs", str(theirs), str(theirs / "docs"), str(roots),
                 "link", "link/docs", str(mine / "link"), "/", ".."):
        r = await api.post("/v1/sources", json={"name": "x", "kind": "folder", "collection_id": collection_id,
                                                "config": {"path": path}}, headers=attacker.headers)
        problem = assert_problem(r, 422)
        assert problem["errors"][0]["key"] == "config.path" and "inside this tenant's folder" in problem["detail"]
    r = await api.post("/v1/sources", json={"name": "mine", "kind": "folder", "collection_id": collection_id,
                                            "config": {"path": "docs"}}, headers=attacker.headers)
    assert r.status_code == 201, r.text
