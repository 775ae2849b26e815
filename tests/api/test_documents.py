"""Documents API: uploads (limits, validation, atomic batches), get/list/delete, SSE progress."""

from __future__ import annotations

import asyncio
import io
import os
import uuid
import zipfile
from pathlib import Path

import msgspec
import pytest
from fpdf import FPDF
from pypdf import PdfReader, PdfWriter

from storage.repositories import documents
from storage.tenancy import tenant_tx
from tests.api.helpers import assert_problem, bearer, create_key, versions_synced
from tests.ingest_helpers import new_collection, upload_text

DOCX_MIME = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def make_pdf(text: str) -> bytes:
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    pdf.add_page()
    pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


def encrypt_pdf(data: bytes, password: str = "pw") -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=password)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def broken_docx() -> bytes:
    """Passes the upload check (a zip with word/document.xml) but cannot be parsed."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("word/document.xml", "<w:document><unclosed")
    return out.getvalue()


def blob_files(settings, tenant_id) -> list[str]:
    """Everything in the tenant's upload folder, temporary files included."""
    folder = Path(settings.data_path) / "uploads" / str(tenant_id)
    return sorted(os.listdir(folder)) if folder.exists() else []


async def upload_files(client, headers, cid, files, **data):
    return await client.post(f"/v1/collections/{cid}/documents", files=files, data=data or None, headers=headers)


async def list_documents(client, headers, **params) -> dict:
    r = await client.get("/v1/documents", params=params, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


async def get_document(client, headers, doc_id) -> dict:
    r = await client.get(f"/v1/documents/{doc_id}", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def sse_events(body: str) -> list[tuple[str, dict]]:
    events = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "event" in fields:
            events.append((fields["event"], msgspec.json.decode(fields.get("data", "null"))))
    return events


# --- uploads ------------------------------------------------------------------------------


async def test_multipart_upload_of_several_files(client, make_tenant, settings):
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    files = [
        ("files", ("a.txt", b"Alpha file about otters.", "text/plain")),
        ("files", ("b.md", b"# Beta\n\nBeta file about badgers.", "text/markdown")),
        ("files", ("c.pdf", make_pdf("Gamma file about cormorants."), "application/pdf")),
    ]
    r = await upload_files(client, t.headers, cid, files, metadata='{"team": "zoo"}')
    assert r.status_code == 202, r.text
    accepted = r.json()["documents"]
    assert [a["filename"] for a in accepted] == ["a.txt", "b.md", "c.pdf"]
    assert [a["action"] for a in accepted] == ["created"] * 3
    assert all(a["status"] == "queued" for a in accepted)
    assert len({a["document_id"] for a in accepted}) == 3

    listed = await list_documents(client, t.headers, collection_id=cid)
    by_id = {d["id"]: d for d in listed["items"]}
    assert set(by_id) == {a["document_id"] for a in accepted}
    for a in accepted:
        assert a["job_id"] == f"ingest:{a['document_id']}:{by_id[a['document_id']]['content_hash']}"
    assert {(d["title"], d["uri"], d["mime_type"]) for d in by_id.values()} == {
        ("a", "a.txt", "text/plain"), ("b", "b.md", "text/markdown"), ("c", "c.pdf", "application/pdf")}
    assert all(d["metadata"] == {"team": "zoo"} and d["status"] == "queued" for d in by_id.values())
    # The bytes wait in the blob store, one file per distinct content, nothing temporary left.
    assert len(blob_files(settings, t.id)) == 3
    assert not [f for f in blob_files(settings, t.id) if f.startswith(".")]


async def test_too_many_files_is_413_and_leaves_nothing(app_client, settings, make_tenant):
    t = await make_tenant()
    async with app_client(msgspec.structs.replace(settings, max_files_per_request=2)) as client:
        cid = await new_collection(client, t.headers)
        files = [("files", (f"f{i}.txt", f"file number {i}".encode(), "text/plain")) for i in range(3)]
        body = assert_problem(await upload_files(client, t.headers, cid, files), 413)
        assert "at most 2 files" in body["detail"]
        assert (await list_documents(client, t.headers))["items"] == []
        assert blob_files(settings, t.id) == []

        ok = await upload_files(client, t.headers, cid, files[:2])
        assert ok.status_code == 202, ok.text


@pytest.mark.parametrize("first_ok", [False, True])
async def test_file_too_big_is_413_and_leaves_nothing(app_client, settings, make_tenant, first_ok):
    t = await make_tenant()
    async with app_client(msgspec.structs.replace(settings, max_upload_bytes=1000)) as client:
        cid = await new_collection(client, t.headers)
        files = [("files", ("big.txt", b"too big " * 500, "text/plain"))]
        if first_ok:  # a file already stored before the big one must go too
            files.insert(0, ("files", ("small.txt", b"small and fine", "text/plain")))
        body = assert_problem(await upload_files(client, t.headers, cid, files), 413)
        assert "big.txt" in body["detail"] and "1000" in body["detail"]
        assert (await list_documents(client, t.headers))["items"] == []
        assert blob_files(settings, t.id) == []

        exactly = await upload_files(client, t.headers, cid, [("files", ("max.txt", b"x" * 1000, "text/plain"))])
        assert exactly.status_code == 202, exactly.text


UNSUPPORTED = [
    ("setup.exe", b"MZ\x90\x00\x03\x00\x00\x00\x04\x00" + bytes(range(256)) * 4, "application/octet-stream"),
    ("x.bin", b"PK\x03\x04\x14\x00\x00\x00" + os.urandom(200), "application/zip"),
]
UNUSABLE = [
    ("empty.txt", b"", "empty"),
    ("locked.pdf", encrypt_pdf(make_pdf("Top secret budget figures.")), "encrypted"),
    ("broken.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog >>\ngarbage garbage\n%%EOF", "corrupt"),
    ("broken.docx", b"PK\x03\x04 this is not really a zip archive", "corrupt"),
]


async def test_unsupported_type_is_415_naming_the_file(client, make_tenant, settings):
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    for filename, content, ctype in UNSUPPORTED:
        files = [("files", ("fine.txt", b"a perfectly fine text file", "text/plain")),
                 ("files", (filename, content, ctype))]
        body = assert_problem(await upload_files(client, t.headers, cid, files), 415)
        assert filename in body["detail"], body
        # The whole batch is refused: the fine file was not registered either.
        assert (await list_documents(client, t.headers))["items"] == []
        assert blob_files(settings, t.id) == []


async def test_unusable_files_are_422(client, make_tenant, settings):
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    for filename, content, needle in UNUSABLE:
        r = await upload_files(client, t.headers, cid, [("files", (filename, content, None))])
        body = assert_problem(r, 422)
        assert filename in body["detail"] and needle in body["detail"].lower(), body["detail"]
    assert (await list_documents(client, t.headers))["items"] == []
    assert blob_files(settings, t.id) == []


async def test_metadata_field_must_be_a_json_object(client, make_tenant, settings):
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    for bad in ("[1, 2]", "not json", '"text"'):
        r = await upload_files(client, t.headers, cid, [("files", ("a.txt", b"some text", "text/plain"))],
                               metadata=bad)
        assert "metadata" in assert_problem(r, 422)["detail"]
    assert (await list_documents(client, t.headers))["items"] == []
    assert blob_files(settings, t.id) == []


async def test_wrong_content_type_is_415(client, make_tenant):
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    r = await client.post(f"/v1/collections/{cid}/documents", content=b"just some text",
                          headers={**t.headers, "content-type": "text/plain"})
    assert_problem(r, 415)
    assert (await list_documents(client, t.headers))["items"] == []


INVALID_JSON_UPLOADS = [
    (b'{"text": ""}', 422),
    (b'{"text": "  \\n\\t "}', 422),
    (b'{"text": "fine", "metadata": [1, 2]}', 422),
    (b'{"text": "fine", "format": "pdf"}', 422),
    (b'{"text": "fine", "colour": "red"}', 422),
    (b'{"text": "unterminated', 400),
    (b"", 400),
]


async def test_invalid_json_uploads(client, make_tenant, settings):
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    for body, status in INVALID_JSON_UPLOADS:
        r = await client.post(f"/v1/collections/{cid}/documents", content=body,
                              headers={**t.headers, "content-type": "application/json"})
        assert r.status_code == status, (body, r.text)
        assert_problem(r, status)
    assert (await list_documents(client, t.headers))["items"] == []
    assert blob_files(settings, t.id) == []


async def test_unknown_or_foreign_collection_is_404(client, make_tenant, settings):
    owner, intruder = await make_tenant(), await make_tenant()
    foreign = await new_collection(client, owner.headers)
    for cid in (str(uuid.uuid4()), foreign):
        url = f"/v1/collections/{cid}/documents"
        assert_problem(await client.post(url, json={"text": "hello"}, headers=intruder.headers), 404)
        r = await upload_files(client, intruder.headers, cid, [("files", ("a.txt", b"hello", "text/plain"))])
        assert_problem(r, 404)
    assert blob_files(settings, intruder.id) == []
    assert (await list_documents(client, owner.headers))["items"] == []


async def test_reader_cannot_upload(client, make_tenant):
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    reader = bearer((await create_key(client, t.headers, "reader"))["key"])
    r = await client.post(f"/v1/collections/{cid}/documents", json={"text": "hello"}, headers=reader)
    assert_problem(r, 403)


async def test_same_file_twice_in_one_request(client, make_tenant, run_jobs, settings):
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    files = [("files", ("dup.txt", b"first version of dup", "text/plain")),
             ("files", ("dup.txt", b"second version of dup", "text/plain"))]
    r = await upload_files(client, t.headers, cid, files)
    assert r.status_code == 202, r.text
    first, second = r.json()["documents"]
    assert first["document_id"] == second["document_id"]
    assert (first["action"], second["action"]) == ("created", "replaced")
    await run_jobs()
    doc = await get_document(client, t.headers, first["document_id"])
    assert doc["status"] == "ready"
    # The stale job of the first version did nothing but drop its bytes.
    assert blob_files(settings, t.id) == []


async def test_multipart_framing_errors(client, make_tenant, settings):
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    url = f"/v1/collections/{cid}/documents"

    async def post(body: bytes, content_type: str = "multipart/form-data; boundary=xyz"):
        return await client.post(url, content=body, headers={**t.headers, "content-type": content_type})

    only_a_field = b'--xyz\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n{}\r\n--xyz--\r\n'
    assert "no file" in assert_problem(await post(only_a_field), 422)["detail"]
    assert_problem(await post(only_a_field, "multipart/form-data"), 400)  # no boundary
    truncated = (b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="a.txt"\r\n'
                 b"Content-Type: text/plain\r\n\r\n" + b"the body stops in the middle of the file " * 50)
    assert_problem(await post(truncated), 400)
    nameless = b"--xyz\r\nContent-Type: text/plain\r\n\r\nno disposition\r\n--xyz--\r\n"
    assert_problem(await post(nameless), 400)
    assert (await list_documents(client, t.headers))["items"] == []
    assert blob_files(settings, t.id) == []  # the partly written file is gone too


async def test_concurrent_uploads_of_one_file_name(client, make_tenant, pool, owner_pool):
    """The second upload waits for the first, then replaces it: no unique-index error."""
    t = await make_tenant()
    cid = uuid.UUID(await new_collection(client, t.headers))
    common = {"tenant_id": t.id, "collection_id": cid, "title": "report", "uri": "report.txt",
              "mime_type": "text/plain", "size_bytes": 10, "metadata": {}}

    async def second_upload():
        async with tenant_tx(pool, t.id) as conn:
            return await documents.register_upload(conn, content_hash="b" * 64, **common)

    async with tenant_tx(pool, t.id) as conn:
        first, first_action = await documents.register_upload(conn, content_hash="a" * 64, **common)
        second = asyncio.create_task(second_upload())
        for _ in range(100):  # until the second insert waits on the first transaction
            async with owner_pool.acquire() as watcher:
                if await watcher.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                          "AND query LIKE '%INSERT INTO documents%'"):
                    break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the second upload never waited for the first")
    replaced, second_action = await asyncio.wait_for(second, 10)
    assert (first_action, second_action) == ("created", "replaced")
    assert replaced.id == first.id and replaced.content_hash == "b" * 64 and replaced.status == "queued"
    async with tenant_tx(pool, t.id, readonly=True) as conn:
        assert await conn.fetchval("SELECT count(*) FROM documents WHERE collection_id = $1", cid) == 1


# --- get / list / delete ------------------------------------------------------------------


async def test_get_document_shows_progress_fields(client, make_tenant, run_jobs, settings):
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    accepted = await upload_text(client, t.headers, cid, "Narwhals have a long spiral tusk.", title="Narwhals",
                                 metadata={"team": "arctic"})
    queued = await get_document(client, t.headers, accepted["document_id"])
    assert queued["status"] == "queued" and queued["chunk_count"] == 0 and queued["attempts"] == 0
    assert queued["started_at"] is None and queued["finished_at"] is None and queued["error"] is None
    assert queued["title"] == "Narwhals" and queued["metadata"] == {"team": "arctic"}
    assert queued["size_bytes"] == len(b"Narwhals have a long spiral tusk.")

    await run_jobs()
    ready = await get_document(client, t.headers, accepted["document_id"])
    assert ready["status"] == "ready" and ready["error"] is None
    assert ready["chunk_count"] == 1 and ready["attempts"] == 1
    assert ready["started_at"] and ready["finished_at"] and ready["finished_at"] >= ready["started_at"]
    assert set(ready["timings"]) == {"parse", "chunk", "embed", "write"}
    assert all(v >= 0 for v in ready["timings"].values())
    assert blob_files(settings, t.id) == []  # the upload is deleted once indexed

    assert_problem(await client.get(f"/v1/documents/{uuid.uuid4()}", headers=t.headers), 404)


async def test_failed_document_shows_the_reason(client, make_tenant, run_jobs, settings):
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    r = await upload_files(client, t.headers, cid, [("files", ("memo.docx", broken_docx(), DOCX_MIME))])
    assert r.status_code == 202, r.text  # structure looks fine: the job finds out
    await run_jobs()
    doc = await get_document(client, t.headers, r.json()["documents"][0]["document_id"])
    assert doc["status"] == "failed" and doc["chunk_count"] == 0
    assert doc["error"] and "docx" in doc["error"].lower()
    assert doc["attempts"] == 1  # a content problem is not retried
    assert blob_files(settings, t.id) == []


async def _corpus_for_listing(client, t, run_jobs):
    """5 documents in two collections: 3 uploaded in one request (same created_at), 2 alone;
    one of them fails."""
    c1 = await new_collection(client, t.headers, "one")
    c2 = await new_collection(client, t.headers, "two")
    files = [("files", (f"batch{i}.txt", f"batch document number {i} about herons".encode(), "text/plain"))
             for i in range(2)] + [("files", ("bad.docx", broken_docx(), DOCX_MIME))]
    r = await upload_files(client, t.headers, c1, files, metadata='{"team": "x", "lang": "en"}')
    assert r.status_code == 202, r.text
    batch = [a["document_id"] for a in r.json()["documents"]]
    solo1 = (await upload_text(client, t.headers, c2, "Solo one about kestrels.", metadata={"team": "y"}))
    solo2 = (await upload_text(client, t.headers, c2, "Solo two about ospreys.", metadata={"team": "x"}))
    await run_jobs()
    return c1, c2, batch, [solo1["document_id"], solo2["document_id"]]


async def test_list_documents_pages_and_filters(client, make_tenant, run_jobs):
    t = await make_tenant()
    c1, c2, batch, solos = await _corpus_for_listing(client, t, run_jobs)
    everything = batch + solos

    seen, cursor, pages = [], None, 0
    while True:
        page = await list_documents(client, t.headers, limit=2, **({"cursor": cursor} if cursor else {}))
        assert len(page["items"]) <= 2
        seen += [d["id"] for d in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert pages == 3
    assert len(seen) == len(set(seen)) == 5 and set(seen) == set(everything)
    assert seen[3:] == solos  # oldest first
    full = await list_documents(client, t.headers)
    assert [d["id"] for d in full["items"]] == seen and full["next_cursor"] is None

    def ids(page):
        return {d["id"] for d in page["items"]}

    assert ids(await list_documents(client, t.headers, status="failed")) == {batch[2]}
    assert ids(await list_documents(client, t.headers, status="ready")) == set(everything) - {batch[2]}
    assert ids(await list_documents(client, t.headers, status="queued")) == set()
    assert ids(await list_documents(client, t.headers, collection_id=c1)) == set(batch)
    assert ids(await list_documents(client, t.headers, collection_id=c2, status="ready")) == set(solos)
    assert ids(await list_documents(client, t.headers, metadata='{"team": "x"}')) == set(batch) | {solos[1]}
    assert ids(await list_documents(client, t.headers, metadata='{"team": "x", "lang": "en"}')) == set(batch)
    assert ids(await list_documents(client, t.headers, metadata='{"team": "nobody"}')) == set()
    filtered = await list_documents(client, t.headers, metadata='{"team": "x"}', limit=2)
    rest = await list_documents(client, t.headers, metadata='{"team": "x"}', cursor=filtered["next_cursor"])
    assert ids(filtered) | ids(rest) == set(batch) | {solos[1]} and not ids(filtered) & ids(rest)


async def test_list_documents_rejects_bad_filters_and_cursors(client, make_tenant):
    t = await make_tenant()
    for params in ({"metadata": "[1]"}, {"metadata": "{not json"}, {"metadata": '"team"'}, {"cursor": "%%%"},
                   {"cursor": "WyJub3QtYS1kYXRlIiwgMV0"}, {"cursor": "W10"}):
        r = await client.get("/v1/documents", params=params, headers=t.headers)
        assert r.status_code == 400, (params, r.text)
        assert_problem(r, 400)
    for params in ({"status": "bogus"}, {"collection_id": "nope"}, {"limit": 0}, {"limit": 201}):
        r = await client.get("/v1/documents", params=params, headers=t.headers)
        assert r.status_code == 422, (params, r.text)
        assert_problem(r, 422)


async def test_delete_stops_search_at_once_and_removes_chunks(client, make_tenant, run_jobs, pool):
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    doc = await upload_text(client, t.headers, cid, "The zorblatt engine powers every hovercraft.")
    keep = await upload_text(client, t.headers, cid, "Hovercraft glide on a cushion of air.")
    await run_jobs()
    for mode in ("hybrid", "vector", "keyword"):
        hits = (await client.post("/v1/search", json={"query": "zorblatt engine", "mode": mode},
                                  headers=t.headers)).json()["hits"]
        assert hits[0]["document_id"] == doc["document_id"], mode
    version = (await client.get(f"/v1/collections/{cid}", headers=t.headers)).json()["version"]

    member = bearer((await create_key(client, t.headers, "member"))["key"])
    assert (await client.delete(f"/v1/documents/{doc['document_id']}", headers=member)).status_code == 204
    versions_synced(client)  # the cached results' versions follow NOTIFY: not a race with this client

    for mode in ("hybrid", "vector", "keyword"):
        hits = (await client.post("/v1/search", json={"query": "zorblatt engine", "mode": mode},
                                  headers=t.headers)).json()["hits"]
        assert doc["document_id"] not in {h["document_id"] for h in hits}, mode
    assert (await client.get(f"/v1/collections/{cid}", headers=t.headers)).json()["version"] > version
    async with tenant_tx(pool, t.id) as conn:
        assert await conn.fetchval("SELECT count(*) FROM chunks WHERE document_id = $1",
                                   uuid.UUID(doc["document_id"])) == 0
        assert await conn.fetchval("SELECT count(*) FROM embeddings e JOIN chunks c ON c.id = e.chunk_id "
                                   "WHERE c.document_id = $1", uuid.UUID(keep["document_id"])) == 1
    assert_problem(await client.delete(f"/v1/documents/{doc['document_id']}", headers=t.headers), 404)


async def test_delete_before_ingestion_drops_the_upload(client, make_tenant, run_jobs, settings):
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    doc = await upload_text(client, t.headers, cid, "Deleted before its job ever ran.")
    assert len(blob_files(settings, t.id)) == 1
    reader = bearer((await create_key(client, t.headers, "reader"))["key"])
    assert_problem(await client.delete(f"/v1/documents/{doc['document_id']}", headers=reader), 403)
    assert (await client.delete(f"/v1/documents/{doc['document_id']}", headers=t.headers)).status_code == 204
    await run_jobs()
    assert_problem(await client.get(f"/v1/documents/{doc['document_id']}", headers=t.headers), 404)
    assert blob_files(settings, t.id) == []

    # The same when the whole collection goes.
    await upload_text(client, t.headers, cid, "Its collection is deleted before the job runs.")
    assert len(blob_files(settings, t.id)) == 1
    assert (await client.delete(f"/v1/collections/{cid}", headers=t.headers)).status_code == 204
    await run_jobs()
    assert blob_files(settings, t.id) == []


# --- progress over SSE --------------------------------------------------------------------


async def test_events_of_one_document(client, make_tenant, run_jobs):
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    doc = await upload_text(client, t.headers, cid, "Axolotls regrow lost limbs.")
    await run_jobs()
    r = await client.get(f"/v1/documents/{doc['document_id']}/events", headers=t.headers)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events == [
        ("status", {"document_id": doc["document_id"], "status": "ready", "chunk_count": 1, "error": None}),
        ("done", {"ready": 1, "failed": 0, "missing": 0}),
    ]


async def test_events_follow_a_document_until_it_is_final(client, make_tenant, run_jobs, pool):
    """Started while the document is queued, the stream reports each change, then `done`.
    (Driven without HTTP: the test client would block the loop the job needs to run on. Without
    change notifications, as here, the stream polls: tests/api/test_document_events.py has them.)"""
    from api.documents.progress import ProgressEvents

    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    doc = await upload_text(client, t.headers, cid, "Tardigrades survive the vacuum of space.")
    stream = ProgressEvents(pool, t.id, [uuid.UUID(doc["document_id"])], changes=None, shutdown=None, max_s=600)
    first = sse_events((await anext(stream)).decode())
    assert first[0][0] == "status" and first[0][1]["status"] == "queued"
    await run_jobs()
    rest = sse_events(b"".join([chunk async for chunk in stream]).decode())
    assert rest == [
        ("status", {"document_id": doc["document_id"], "status": "ready", "chunk_count": 1, "error": None}),
        ("done", {"ready": 1, "failed": 0, "missing": 0}),
    ]


async def test_batch_events_with_failed_and_missing(client, make_tenant, run_jobs):
    t, other = await make_tenant(), await make_tenant()
    cid = await new_collection(client, t.headers)
    good = (await upload_text(client, t.headers, cid, "Pangolins are covered in scales."))["document_id"]
    r = await upload_files(client, t.headers, cid, [("files", ("bad.docx", broken_docx(), DOCX_MIME))])
    bad = r.json()["documents"][0]["document_id"]
    foreign_cid = await new_collection(client, other.headers)
    foreign = (await upload_text(client, other.headers, foreign_cid, "Not yours."))["document_id"]
    unknown = str(uuid.uuid4())
    await run_jobs()

    r = await client.get("/v1/documents/events", params={"ids": ",".join([good, bad, unknown, foreign])},
                         headers=t.headers)
    assert r.status_code == 200, r.text
    events = sse_events(r.text)
    status = {e[1]["document_id"]: e[1] for e in events if e[0] == "status"}
    assert status[good]["status"] == "ready"
    assert status[bad]["status"] == "failed" and status[bad]["error"]
    assert status[unknown]["status"] == "missing"
    assert status[foreign] == {"document_id": foreign, "status": "missing", "chunk_count": 0, "error": None}
    assert events[-1] == ("done", {"ready": 1, "failed": 1, "missing": 2})


async def test_batch_events_validation(client, make_tenant):
    t = await make_tenant()
    too_many = ",".join(str(uuid.uuid4()) for _ in range(101))
    assert_problem(await client.get("/v1/documents/events", params={"ids": too_many}, headers=t.headers), 422)
    assert_problem(await client.get("/v1/documents/events", params={"ids": ","}, headers=t.headers), 422)
    for bad in ("nope", f"{uuid.uuid4()},12"):
        assert_problem(await client.get("/v1/documents/events", params={"ids": bad}, headers=t.headers), 400)
    assert_problem(await client.get("/v1/documents/events", headers=t.headers), 422)  # no ids at all


async def test_upload_while_the_queue_is_down(app_client, client, settings, make_tenant, run_jobs):
    """No document may stay `queued` without a job: the caller gets a 503 and the documents
    say why they were not ingested; uploading again works once the queue is back."""
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    files = [("files", ("a.txt", b"Queued while Redis was down.", "text/plain")),
             ("files", ("b.txt", b"Also queued while Redis was down.", "text/plain"))]
    async with app_client(msgspec.structs.replace(settings, redis_url="redis://127.0.0.1:9/0")) as broken:
        r = await upload_files(broken, t.headers, cid, files)
        assert_problem(r, 503)
        assert r.headers["retry-after"] == "5"
        r = await broken.post(f"/v1/collections/{cid}/documents", json={"text": "Sent as JSON while down."},
                              headers=t.headers)
        assert "queue" in assert_problem(r, 503)["detail"]
    docs = (await list_documents(client, t.headers))["items"]
    assert len(docs) == 3
    assert all(d["status"] == "failed" and "upload it again" in d["error"] for d in docs), docs
    assert blob_files(settings, t.id) == []

    again = await upload_files(client, t.headers, cid, files)
    assert again.status_code == 202 and [a["action"] for a in again.json()["documents"]] == ["replaced"] * 2
    await run_jobs()
    ready = await list_documents(client, t.headers, status="ready")
    assert {d["uri"] for d in ready["items"]} == {"a.txt", "b.txt"}
