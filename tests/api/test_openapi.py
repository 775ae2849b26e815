"""The OpenAPI schema says what the API really answers: problems and event streams; OPTIONS is
authenticated like every other method (it answered 500 on the admin routes, found by fuzzing)."""

from __future__ import annotations

import pytest

from tests.api.helpers import assert_problem, bearer, create_key


@pytest.mark.parametrize("path", ["/v1/admin/keys", "/v1/admin/plans", "/v1/collections"])
async def test_options_is_authenticated_and_guarded(client, make_tenant, path):
    operator = await make_tenant(operator=True)
    reader = await create_key(client, operator.headers, "reader")
    assert_problem(await client.options(path), 401)
    assert (await client.options(path, headers=operator.headers)).status_code in (200, 204)
    if path.startswith("/v1/admin"):
        assert_problem(await client.options(path, headers=bearer(reader["key"])), 403)


async def test_schema_declares_problems_and_streams(client):
    schema = (await client.get("/docs/openapi.json")).json()
    search = schema["paths"]["/v1/search"]["post"]["responses"]
    assert {"400", "401", "403", "422", "429", "503"} <= search.keys()
    assert list(search["401"]["content"]) == ["application/problem+json"]
    events = schema["paths"]["/v1/documents/{document_id}/events"]["get"]["responses"]["200"]["content"]
    assert list(events) == ["text/event-stream"]
    chat = schema["paths"]["/v1/chat"]["post"]["responses"]["200"]["content"]
    assert set(chat) == {"application/json", "text/event-stream"}
    health = schema["paths"]["/healthz"]["get"]["responses"]
    assert "401" not in health
