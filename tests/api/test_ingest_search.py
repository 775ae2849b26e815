"""End to end: upload (every format) → arq job → chunks + embeddings → search."""

from __future__ import annotations

import io

import docx
from fpdf import FPDF

from tests.ingest_helpers import new_collection, upload_text


def make_pdf(pages: list[str]) -> bytes:
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


def make_docx(heading: str, paragraphs: list[str]) -> bytes:
    document = docx.Document()
    document.add_heading(heading, level=1)
    for p in paragraphs:
        document.add_paragraph(p)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


HTML = """<html><head><title>Glacier Guide</title><style>.x{color:red}</style></head><body>
<nav>Home | Products | Pricing | Login NAVIGATIONCHROME</nav>
<header>Site header BANNERCHROME</header>
<main><h1>Glaciers</h1><p>Glaciers carve U-shaped valleys as they slowly advance downhill.</p>
<h2>Moraines</h2><p>Moraines are ridges of rock debris left behind by a retreating glacier.</p></main>
<footer>Copyright FOOTERCHROME</footer><script>var TRACKINGSCRIPT = 1;</script></body></html>"""


async def _document(client, headers, doc_id):
    r = await client.get(f"/v1/documents/{doc_id}", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


async def _search(client, headers, query, **extra):
    r = await client.post("/v1/search", json={"query": query, **extra}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


async def test_every_format_is_ingested_and_searchable(client, make_tenant, run_jobs):
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    files = [
        ("files", ("notes.txt", b"The lighthouse keeper logs every passing ship in a leather journal.", "text/plain")),
        ("files", ("guide.md", b"# Baking\n\nSourdough needs a starter fed with flour and water.\n\n## Proofing\n\n"
                               b"Let the dough proof overnight in a cool kitchen.", "text/markdown")),
        ("files", ("glaciers.html", HTML.encode(), "text/html")),
        ("files", ("report.pdf", make_pdf(["Volcanoes erupt when magma pressure rises.",
                                           "Tectonic plates drift a few centimetres each year."]), "application/pdf")),
        ("files", ("memo.docx", make_docx("Quarterly Memo", ["Revenue from beekeeping supplies doubled."]),
                   "application/vnd.openxmlformats-officedocument.wordprocessingml.document")),
    ]
    r = await client.post(f"/v1/collections/{cid}/documents", files=files, data={"metadata": '{"team": "geo"}'},
                          headers=t.headers)
    assert r.status_code == 202, r.text
    accepted = r.json()["documents"]
    assert [a["action"] for a in accepted] == ["created"] * 5
    assert all(a["job_id"] for a in accepted)

    await run_jobs()
    docs = {a["filename"]: await _document(client, t.headers, a["document_id"]) for a in accepted}
    for name, doc in docs.items():
        assert doc["status"] == "ready", (name, doc["error"])
        assert doc["chunk_count"] >= 1
        assert doc["metadata"] == {"team": "geo"}
        assert set(doc["timings"]) >= {"parse", "chunk", "embed"}

    expectations = {
        "who records ships in a journal": "notes.txt",
        "how long should dough proof": "guide.md",
        "ridges of debris from retreating ice": "glaciers.html",
        "how fast do tectonic plates move": "report.pdf",
        "beekeeping revenue": "memo.docx",
    }
    for query, filename in expectations.items():
        hits = (await _search(client, t.headers, query, collections=[cid]))["hits"]
        assert hits, query
        assert hits[0]["document_id"] == docs[filename]["id"], (query, hits[0]["text"])

    pdf_hit = (await _search(client, t.headers, "tectonic plates drift", k=1))["hits"][0]
    assert pdf_hit["page"] == 2
    md_hit = (await _search(client, t.headers, "proof overnight cool kitchen", k=1))["hits"][0]
    assert md_hit["heading"] == "Proofing"
    assert "<mark>" in (md_hit["highlight"] or "")

    # HTML navigation chrome was stripped before indexing.
    for chrome in ("NAVIGATIONCHROME", "BANNERCHROME", "FOOTERCHROME", "TRACKINGSCRIPT"):
        hits = (await _search(client, t.headers, chrome, mode="keyword"))["hits"]
        assert hits == [], chrome


async def test_identical_upload_is_a_noop_and_changed_content_replaces(client, make_tenant, run_jobs, pool):
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    first = await upload_text(client, t.headers, cid, "Penguins huddle together for warmth.", uri="birds.txt")
    await run_jobs()
    again = await upload_text(client, t.headers, cid, "Penguins huddle together for warmth.", uri="birds.txt")
    assert again["document_id"] == first["document_id"]
    assert again["action"] == "unchanged" and again["job_id"] is None

    changed = await upload_text(client, t.headers, cid, "Albatrosses glide for hours over the ocean.", uri="birds.txt")
    assert changed["document_id"] == first["document_id"] and changed["action"] == "replaced"
    await run_jobs()
    doc = await _document(client, t.headers, first["document_id"])
    assert doc["status"] == "ready"
    assert (await _search(client, t.headers, "penguins huddle", mode="keyword"))["hits"] == []
    hits = (await _search(client, t.headers, "albatross gliding over the sea"))["hits"]
    assert hits and hits[0]["document_id"] == first["document_id"]
    from storage.tenancy import tenant_tx

    async with tenant_tx(pool, t.id) as conn:
        n = await conn.fetchval("SELECT count(*) FROM chunks WHERE document_id = $1", doc["id"])
        e = await conn.fetchval("SELECT count(*) FROM embeddings e JOIN chunks c ON c.id = e.chunk_id "
                                "WHERE c.document_id = $1", doc["id"])
    assert n == doc["chunk_count"] == e


async def test_delete_document_and_collection(client, make_tenant, run_jobs):
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    doc = await upload_text(client, t.headers, cid, "Quokkas live on Rottnest Island.")
    other = await upload_text(client, t.headers, cid, "Wombats produce cube-shaped droppings.")
    await run_jobs()
    assert (await _search(client, t.headers, "quokka island"))["hits"]
    r = await client.delete(f"/v1/documents/{doc['document_id']}", headers=t.headers)
    assert r.status_code == 204
    hits = (await _search(client, t.headers, "quokka island"))["hits"]
    assert all(h["document_id"] != doc["document_id"] for h in hits)
    assert (await client.get(f"/v1/documents/{doc['document_id']}", headers=t.headers)).status_code == 404

    r = await client.delete(f"/v1/collections/{cid}", headers=t.headers)
    assert r.status_code == 204
    assert (await client.get(f"/v1/documents/{other['document_id']}", headers=t.headers)).status_code == 404
    assert (await _search(client, t.headers, "wombat"))["hits"] == []


async def test_tenant_isolation_of_search_and_documents(client, make_tenant, run_jobs):
    a, b = await make_tenant(), await make_tenant()
    ca = await new_collection(client, a.headers)
    doc = await upload_text(client, a.headers, ca, "The secret launch code of project Zephyr is ZX-9921.")
    await run_jobs()
    assert (await _search(client, a.headers, "ZX-9921"))["hits"]
    for mode in ("hybrid", "vector", "keyword"):
        assert (await _search(client, b.headers, "ZX-9921 launch code", mode=mode))["hits"] == []
        assert (await _search(client, b.headers, "launch code", mode=mode, collections=[ca]))["hits"] == []
    assert (await client.get(f"/v1/documents/{doc['document_id']}", headers=b.headers)).status_code == 404
    assert (await client.delete(f"/v1/documents/{doc['document_id']}", headers=b.headers)).status_code == 404
    assert (await client.get(f"/v1/collections/{ca}", headers=b.headers)).status_code == 404
    r = await client.post(f"/v1/collections/{ca}/documents", json={"text": "intrusion"}, headers=b.headers)
    assert r.status_code == 404
    listed = (await client.get("/v1/documents", headers=b.headers)).json()["items"]
    assert listed == []
