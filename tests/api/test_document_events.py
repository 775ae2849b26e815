"""Document-progress streams are bounded and pushed (api/documents/progress.py): a per-tenant cap
across workers (429 + Retry-After), a maximum lifetime (then a retryable `error`), and change
notifications from Postgres instead of a poll per stream."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import pytest

from api.app import app_database_url
from api.documents import progress
from api.documents.progress import ProgressEvents, event_slots
from storage.document_changes import DocumentChanges
from tests.api.chat_helpers import chat_app, drive_asgi, parse_sse
from tests.api.helpers import assert_problem
from tests.ingest_helpers import new_collection, upload_text
from tests.replica_helpers import eventually

GENEROUS_S = 60  # only turns a hang into a failure; the waits below end on events, not on time


@pytest.fixture
async def changes(settings):
    listener = DocumentChanges.connecting_to(app_database_url(settings))
    yield listener
    await listener.stop()


@pytest.fixture
def no_polling(monkeypatch):
    """Reads happen only when a notification wakes the stream: a stream that needed a poll hangs."""
    monkeypatch.setattr(progress, "SAFETY_POLL_S", 3600.0)
    monkeypatch.setattr(progress, "FALLBACK_POLL_S", 3600.0)


def _events(chunks: list[bytes]):
    return parse_sse(b"".join(chunks).decode())


async def _started(changes: DocumentChanges, stream: ProgressEvents) -> list[bytes]:
    """The stream's first chunk, read once this process listens."""
    changes.start()
    await asyncio.wait_for(changes.wait_live(), GENEROUS_S)
    return [await anext(stream)]


async def _rest(stream: ProgressEvents) -> list[bytes]:
    async with asyncio.timeout(GENEROUS_S):
        return [chunk async for chunk in stream]


async def test_a_status_change_reaches_the_stream_without_a_poll(client, make_tenant, run_jobs, pool, changes,
                                                                 no_polling):
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    doc = (await upload_text(client, t.headers, cid, "Narwhal tusks are teeth."))["document_id"]
    stream = ProgressEvents(pool, t.id, [uuid.UUID(doc)], changes=changes, shutdown=None, max_s=3600)
    first = _events(await _started(changes, stream))
    assert [(e.event, e.data["status"]) for e in first] == [("status", "queued")]
    await run_jobs()  # queued -> processing -> ready, each committed change NOTIFYs
    rest = _events(await _rest(stream))
    assert [(e.event, e.data) for e in rest] == [
        ("status", {"document_id": doc, "status": "ready", "chunk_count": 1, "error": None}),
        ("done", {"ready": 1, "failed": 0, "missing": 0}),
    ]
    assert changes.notifications >= 1 and changes.watchers() == 0
    # One read at the start, then one per wake-up (the job's changes may fold into fewer).
    assert 2 <= stream.reads <= 1 + changes.notifications


async def test_a_deletion_reaches_the_stream(client, make_tenant, pool, changes, no_polling):
    """Deleting documents notifies their tenant once per statement (a collection may hold thousands)."""
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    docs = [(await upload_text(client, t.headers, cid, f"Doc {i} about otters."))["document_id"] for i in range(2)]
    stream = ProgressEvents(pool, t.id, [uuid.UUID(d) for d in docs], changes=changes, shutdown=None, max_s=3600)
    await _started(changes, stream)
    assert (await client.delete(f"/v1/collections/{cid}", headers=t.headers)).status_code == 204
    rest = _events(await _rest(stream))
    assert rest[-1].event == "done" and rest[-1].data == {"ready": 0, "failed": 0, "missing": 2}


async def test_a_quiet_stream_reads_postgres_once_until_its_lifetime_ends(client, make_tenant, pool, changes):
    """No 0.5 s poll per stream: within its whole (short) life, a stream whose documents do not
    change reads once (the safety read is 15 s away). A slower machine only reads less."""
    assert progress.SAFETY_POLL_S >= 10
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    doc = (await upload_text(client, t.headers, cid, "Nothing will happen to this one."))["document_id"]
    stream = ProgressEvents(pool, t.id, [uuid.UUID(doc)], changes=changes, shutdown=None, max_s=3)
    await _started(changes, stream)
    rest = _events(await _rest(stream))
    assert [e.event for e in rest] == ["error"]
    assert rest[0].data["code"] == "stream_expired" and rest[0].data["retryable"] is True
    assert stream.reads == 1


async def test_a_lost_listener_reconnects_and_streams_catch_up(client, make_tenant, pool, owner_pool, changes,
                                                              no_polling):
    """A change made while the LISTEN connection is down is not notified: the reconnection wakes
    every stream, which re-reads it. Once back, changes are pushed again."""
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    docs = [uuid.UUID((await upload_text(client, t.headers, cid, f"Listening {i}."))["document_id"]) for i in range(2)]
    stream = ProgressEvents(pool, t.id, [docs[0]], changes=changes, shutdown=None, max_s=3600)
    await _started(changes, stream)
    following = asyncio.create_task(_rest(stream))
    gate = asyncio.Event()  # holds the reconnection until the change below is made
    connect = changes._connect

    async def held_connect():
        await gate.wait()
        return await connect()

    changes._connect = held_connect
    async with owner_pool.acquire() as conn:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", changes._conn.get_server_pid())
    async def deaf_and_reread() -> bool:  # the loss is noticed (by the next ping at the latest) and
        return not changes.live and stream.reads >= 2  # wakes the stream, which re-reads: nothing changed yet

    await eventually(deaf_and_reread, "the listener's loss", GENEROUS_S)
    async with owner_pool.acquire() as conn:
        await conn.execute("UPDATE documents SET status = 'failed', error = 'changed while deaf' WHERE id = $1",
                           docs[0])
    gate.set()
    rest = _events(await following)
    assert rest[-1].event == "done" and rest[-1].data == {"ready": 0, "failed": 1, "missing": 0}
    assert rest[-2].data["error"] == "changed while deaf"

    later = ProgressEvents(pool, t.id, [docs[1]], changes=changes, shutdown=None, max_s=3600)
    await _started(changes, later)
    async with owner_pool.acquire() as conn:
        await conn.execute("UPDATE documents SET status = 'failed', error = 'pushed' WHERE id = $1", docs[1])
    assert _events(await _rest(later))[-2].data["error"] == "pushed"


async def test_the_streams_of_a_tenant_are_capped(settings, make_tenant, run_jobs):
    async with chat_app(msgspec.structs.replace(settings, event_streams_per_tenant=2)) as capp:
        t, other = await make_tenant(), await make_tenant()
        cid = await new_collection(capp, t.headers)
        docs = [(await upload_text(capp, t.headers, cid, f"Capped {i}: walruses."))["document_id"] for i in range(2)]
        slots = event_slots(capp.app.state, capp.app.state.settings)
        open_streams = [asyncio.create_task(capp.get(f"/v1/documents/{docs[0]}/events", headers=t.headers)),
                        asyncio.create_task(capp.get("/v1/documents/events", params={"ids": ",".join(docs)},
                                                     headers=t.headers))]
        async def both_open() -> bool:
            return await slots.in_use(t.id) == 2

        await eventually(both_open, "two open streams", GENEROUS_S)

        for refused in (await capp.get(f"/v1/documents/{docs[1]}/events", headers=t.headers),
                        await capp.get("/v1/documents/events", params={"ids": docs[0]}, headers=t.headers)):
            body = assert_problem(refused, 429)
            assert "2 document progress streams" in body["detail"] and int(refused.headers["retry-after"]) >= 1
        # Another tenant has its own places.
        r = await capp.get(f"/v1/documents/{uuid.uuid4()}/events", headers=other.headers)
        assert r.status_code == 200 and parse_sse(r.text)[-1].event == "done"

        await run_jobs()  # the documents become ready: both streams end, and give their places back
        async with asyncio.timeout(GENEROUS_S):
            ended = await asyncio.gather(*open_streams)
        assert [parse_sse(r.text)[-1].event for r in ended] == ["done", "done"]
        assert await slots.in_use(t.id) == 0
        r = await capp.get(f"/v1/documents/{docs[1]}/events", headers=t.headers)
        assert r.status_code == 200 and parse_sse(r.text)[-1].data == {"ready": 1, "failed": 0, "missing": 0}


async def test_a_stream_ends_at_its_max_lifetime_and_frees_its_place(settings, make_tenant):
    async with chat_app(msgspec.structs.replace(settings, event_stream_max_s=1.0)) as capp:
        t = await make_tenant()
        cid = await new_collection(capp, t.headers)
        doc = (await upload_text(capp, t.headers, cid, "Still queued when the stream ends."))["document_id"]
        async with asyncio.timeout(GENEROUS_S):
            r = await capp.get(f"/v1/documents/{doc}/events", headers=t.headers)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(r.text)
        assert [(e.event, e.data.get("status") or e.data.get("code")) for e in events] == [
            ("status", "queued"), ("error", "stream_expired")]
        assert events[-1].data["retryable"] is True and "retry: 1000" in r.text
        assert await event_slots(capp.app.state, capp.app.state.settings).in_use(t.id) == 0


async def test_a_client_hanging_up_gives_the_place_back(settings, make_tenant):
    """Otherwise each hang-up would hold a place for the whole lease and lock the tenant out."""
    async with chat_app(msgspec.structs.replace(settings, event_streams_per_tenant=1)) as capp:
        t = await make_tenant()
        cid = await new_collection(capp, t.headers)
        doc = (await upload_text(capp, t.headers, cid, "Nobody will read this to the end."))["document_id"]
        slots = event_slots(capp.app.state, capp.app.state.settings)
        for _ in range(3):  # more hang-ups than places
            exchange = await drive_asgi(capp.app, "GET", f"/v1/documents/{doc}/events", t.headers, None,
                                        hang_up_when=lambda body: b'"queued"' in body, within_s=GENEROUS_S)
            assert exchange.status == 200 and exchange.disconnected_at is not None
            assert await slots.in_use(t.id) == 0
        assert capp.app.state.document_changes.watchers() == 0
