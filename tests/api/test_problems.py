"""Errors leave as RFC 9457 problems; readiness reports broken dependencies; docs are public."""

from __future__ import annotations

import msgspec
import pytest

from storage.embedded import free_port
from tests.api.helpers import assert_problem, bearer, create_key


async def test_malformed_json_is_400(client, make_tenant):
    t = await make_tenant()
    r = await client.post("/v1/admin/users", content=b'{"email": "x@example.com", ',
                          headers={**t.headers, "Content-Type": "application/json"})
    assert_problem(r, 400)


@pytest.mark.parametrize("body", [
    {"name": 5},
    {"name": "ok-name", "unknown": 1},
    {},
    [],
])
async def test_badly_shaped_body_is_422_with_errors(client, make_tenant, body):
    op = await make_tenant(operator=True)
    r = await client.post("/v1/admin/tenants", json=body, headers=op.headers)
    problem = assert_problem(r, 422)
    assert isinstance(problem["errors"], list) and problem["errors"]


async def test_wrong_enum_value_is_422(client, make_tenant):
    t = await make_tenant()
    r = await client.post("/v1/admin/keys", json={"role": "owner"}, headers=t.headers)
    assert assert_problem(r, 422)["errors"]


async def test_oversized_body_is_413(settings, app_client, make_tenant):
    op = await make_tenant(operator=True)
    small = msgspec.structs.replace(settings, max_json_bytes=1000)
    async with app_client(small) as client:
        ok = await client.post("/v1/admin/keys", json={"role": "reader"}, headers=op.headers)
        assert ok.status_code == 201, ok.text
        big = {"role": "reader", "name": "x" * 2000}
        assert_problem(await client.post("/v1/admin/keys", json=big, headers=op.headers), 413)


async def test_unknown_route_is_404(client):
    assert_problem(await client.get("/v1/nothing-here"), 404)


async def test_wrong_method_is_405(client, make_tenant):
    t = await make_tenant()
    assert_problem(await client.put("/v1/me", headers=t.headers), 405)
    assert_problem(await client.post("/healthz"), 405)


async def test_invalid_uuid_path_parameter_is_a_client_error(client, make_tenant):
    t = await make_tenant()
    r = await client.delete("/v1/admin/keys/not-a-uuid", headers=t.headers)
    assert r.status_code in (400, 404, 422)
    assert_problem(r, r.status_code)


async def test_database_outage_during_auth_is_503(settings, app_client):
    down = msgspec.structs.replace(settings, database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    async with app_client(down) as client:
        r = await client.get("/v1/me", headers=bearer("qk_AAAAAAAA_" + "A" * 43))
        assert_problem(r, 503)


async def test_healthz(client):
    r = await client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


async def test_readyz_reports_redis_outage_as_degraded(settings, app_client):
    # Postgres fine, Redis down: the API still serves (without cache), so 200 "degraded".
    down = msgspec.structs.replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with app_client(down) as client:
        r = await client.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "degraded"
    assert body["checks"]["postgres"] == "ok"
    assert body["checks"]["redis"].startswith("error")


async def test_readyz_reports_postgres_outage(settings, app_client):
    down = msgspec.structs.replace(settings, database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    async with app_client(down) as client:
        r = await client.get("/readyz")
    body = assert_problem(r, 503)
    assert body["checks"]["postgres"].startswith("error")
    assert body["checks"]["redis"] == "ok"


async def test_docs_are_public(client):
    r = await client.get("/docs")
    assert r.status_code == 200, r.text
    assert "text/html" in r.headers["content-type"]
    spec = await client.get("/docs/openapi.json")
    assert spec.status_code == 200, spec.text
    operation_ids = {op.get("operationId") for item in spec.json()["paths"].values() for op in item.values()
                     if isinstance(op, dict)}
    assert {"createTenant", "listTenants", "createUser", "listUsers", "createKey", "listKeys",
            "revokeKey", "whoami", "healthz", "readyz"} <= operation_ids


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/healthz"), ("GET", "/v1/me"), ("GET", "/v1/nothing-here"), ("POST", "/healthz"),
])
async def test_every_response_carries_a_request_id(client, method, path):
    """Errors too (401 from auth, 404/405 from routing): that is when support needs the id."""
    r = await client.request(method, path, headers={"X-Request-ID": "abc-123"})
    assert r.headers.get_list("x-request-id") == ["abc-123"]
    generated = (await client.request(method, path)).headers.get_list("x-request-id")
    assert len(generated) == 1 and len(generated[0]) == 32


async def test_problem_for_guard_names_the_role(client, make_tenant):
    t = await make_tenant()
    key = (await create_key(client, t.headers, "reader"))["key"]
    body = assert_problem(await client.get("/v1/admin/keys", headers=bearer(key)), 403)
    assert "admin" in body["detail"] and body["instance"] == "/v1/admin/keys"


async def test_non_json_body_to_json_endpoint_is_415(client, make_tenant):
    t = await make_tenant()
    for content_type, body in (("application/x-www-form-urlencoded", b"name=x"), ("text/plain", b"name")):
        r = await client.post("/v1/collections", content=body,
                              headers={**t.headers, "content-type": content_type})
        assert r.status_code == 415, r.text
        assert r.headers["content-type"].startswith("application/problem+json")


async def test_truncated_json_is_400_malformed_body(client, make_tenant):
    t = await make_tenant()
    r = await client.post("/v1/collections", content=b'{"name": ',
                          headers={**t.headers, "content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["type"].endswith("/malformed-body")
