"""Shared assertions and shortcuts for API tests."""

from __future__ import annotations

PROBLEM_FIELDS = {"type", "title", "status", "detail", "instance"}


def assert_problem(response, status: int) -> dict:
    """An RFC 9457 problem with `status`, no stack trace; returns the body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "Traceback" not in response.text
    body = response.json()
    assert PROBLEM_FIELDS <= body.keys(), body
    assert body["status"] == status
    return body


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def create_key(client, admin_headers: dict[str, str], role: str, **extra) -> dict:
    """Create a key through the API (as the given admin); returns the NewKey body."""
    r = await client.post("/v1/admin/keys", json={"role": role, **extra}, headers=admin_headers)
    assert r.status_code == 201, r.text
    return r.json()


def versions_synced(client) -> None:
    """Waits until the app's in-memory collection versions have applied every change committed
    so far (storage.caches.versions; one round trip on its LISTEN connection). Production
    searches do not wait: a notification normally lands well under a millisecond after commit,
    but a test must not depend on that race."""
    versions = client.app.state.serving.versions
    if versions is not None:
        client.blocking_portal.call(versions.sync)
