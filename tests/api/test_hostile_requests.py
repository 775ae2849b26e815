"""Hostile requests through a real Granian worker: each answers with a clear 4xx problem (or is
accepted), and the worker keeps serving everyone else meanwhile.

One worker, so a request that froze its event loop would freeze `/healthz` too: a probe polls
it throughout and records its slowest answer. The inputs are the review's findings scaled up
until the old code took minutes or hours (an exponential format sniff, quadratic regexes over
runs of spaces, surrogates the database cannot store, malformed bearers). The bounds are
generous (tens of seconds) so a slow machine cannot fail them; the code they guard against
does not finish at all.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

import httpx
import pytest

from core.settings import Settings
from storage.repositories import api_keys, tenants
from storage.repositories import documents as document_repo
from storage.tenancy import tenant_tx
from tests.ingest_helpers import new_collection, run_jobs, upload_text
from tests.live_server import LiveServer, live_api, unhandled_errors

BOUND_S = 30.0  # a hostile request answered, and the longest /healthz wait, within this


@pytest.fixture(scope="module")
def server(settings: Settings, tmp_path_factory: pytest.TempPathFactory):
    assert settings.database_url and settings.redis_url
    env = {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
           "QUARRY_DATA_DIR": settings.data_dir, "QUARRY_LOG_LEVEL": "warning",
           "QUARRY_RATE_LIMIT_ENABLED": "false",
           "QUARRY_APP_DB_PASSWORD": settings.app_db_password or ""}
    with live_api(env, tmp_path_factory.mktemp("hostile") / "granian.log") as live:
        yield live


@dataclass
class Tenant:
    id: uuid.UUID
    headers: dict[str, str]
    collection_id: str
    uploaded: list[str] = field(default_factory=list)  # document ids the hostile uploads created


@pytest.fixture(scope="module")
async def tenant(server: LiveServer, pool, owner_pool, settings: Settings, worker_ctx) -> Tenant:
    """A tenant with one ingested document, so searches and chats reach the index and the agent."""
    async with owner_pool.acquire() as conn:  # the app role cannot create tenants
        row = await tenants.create_tenant(conn, f"hostile-{uuid.uuid4().hex[:8]}")
    async with tenant_tx(pool, row.id) as conn:
        key, _ = await api_keys.create_key(conn, row.id, "admin")
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=server.base, timeout=60) as client:
        collection = await new_collection(client, headers, "hostile")
        await upload_text(client, headers, collection, "Backups run nightly at 02:00 and are kept for 30 days.")
    await run_jobs(settings, worker_ctx)
    return Tenant(row.id, headers, collection)


def _multipart(name: str, content_type: str, body: bytes) -> dict:
    return {"files": {"file": (name, body, content_type)}}


SPACES = " " * 200_000
HOSTILE = {
    # exponential in the old HTML sniff (each extra comment doubled the time; 27 took 9 s)
    "upload-nested-comments": ("upload", "", _multipart("x", "application/octet-stream", b"<!---->" * 60 + b"x")),
    "upload-spaces": ("upload", "", _multipart("spaces.txt", "text/plain", b" " * 5_000_000 + b"x")),
    "upload-atx-spaces": ("upload", "", _multipart("h.md", "text/markdown", b"#" + b" " * 2_000_000 + b"x")),
    "chat-spaced-question": ("POST", "/v1/chat", {"json": {"message": "what" + SPACES + "and how"}}),
    "chat-spaced-history": ("POST", "/v1/chat", {"json": {
        "message": "and then?",
        "history": [{"role": "assistant", "content": "[1" + ", 1" * 50_000 + SPACES}]}}),
    "completions-spaced": ("POST", "/v1/chat/completions", {"json": {
        "model": "quarry", "messages": [{"role": "user", "content": "how" + SPACES + "and why"}]}}),
    "search-spaced-query": ("POST", "/v1/search", {"json": {"query": "a" + SPACES + "and b"}}),
    "search-surrogate-filter": ("POST", "/v1/search", {
        "content": b'{"query": "x", "filter": {"metadata": {"k": "\\ud918"}}}',
        "headers": {"Content-Type": "application/json"}}),
    # raw UTF-8 of a lone surrogate: msgspec raises UnicodeDecodeError, not a DecodeError
    "search-invalid-utf8-filter": ("POST", "/v1/search", {
        "content": b'{"query": "x", "filter": {"metadata": {"k": "\xed\xa0\x80"}}}',
        "headers": {"Content-Type": "application/json"}}),
    "list-invalid-utf8-metadata": ("GET", "/v1/documents?metadata=%7B%22k%22%3A%22%ED%A0%80%22%7D", {}),
    "options-admin": ("OPTIONS", "/v1/admin/keys", {}),
}


async def _probe(base: str, stop: asyncio.Event, slowest: list[float]) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=BOUND_S * 2) as client:
        while not stop.is_set():
            started = time.monotonic()
            await client.get("/healthz")
            slowest.append(time.monotonic() - started)
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_hostile_request_is_refused_or_accepted_without_freezing_the_worker(
    server: LiveServer, tenant: Tenant, case: str
) -> None:
    method, target, kwargs = HOSTILE[case]
    upload = method == "upload"
    if upload:
        method, target = "POST", f"/v1/collections/{tenant.collection_id}/documents"
    async with httpx.AsyncClient(base_url=server.base, headers=tenant.headers, timeout=BOUND_S * 4) as client:
        stop, waits = asyncio.Event(), [0.0]
        probe = asyncio.create_task(_probe(server.base, stop, waits))
        started = time.monotonic()
        try:
            response = await client.request(method, target, **kwargs)
        finally:
            elapsed = time.monotonic() - started
            stop.set()
            await probe
    assert response.status_code < 500, response.text[:2000]
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json"), response.text[:500]
    assert elapsed < BOUND_S, f"{case} took {elapsed:.1f} s"
    assert max(waits) < BOUND_S, f"/healthz waited {max(waits):.1f} s during {case}"
    if upload and response.status_code == 202:
        tenant.uploaded += [d["document_id"] for d in response.json()["documents"]]


async def test_accepted_hostile_uploads_end_ready_or_failed(tenant: Tenant, pool, settings: Settings,
                                                            worker_ctx) -> None:
    """The ingestion worker gets through what the API accepted above: every document ends
    `ready` or `failed` with a reason, none is left `processing` or `queued`."""
    assert tenant.uploaded, "no hostile upload was accepted: nothing reached the worker"
    started = time.monotonic()
    await run_jobs(settings, worker_ctx, timeout_s=BOUND_S * 4)
    async with tenant_tx(pool, tenant.id, readonly=True) as conn:
        docs = await document_repo.get_documents(conn, [uuid.UUID(d) for d in tenant.uploaded])
    assert {d.status for d in docs} <= {"ready", "failed"}, [(d.title, d.status, d.error) for d in docs]
    assert all(d.error for d in docs if d.status == "failed")
    assert time.monotonic() - started < BOUND_S * 4


def test_no_unhandled_error_was_logged(server: LiveServer) -> None:
    """After the cases above (same server): nothing reached the unhandled-error handler."""
    assert not unhandled_errors(server), server.output()

