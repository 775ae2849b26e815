"""Search over a small corpus: what each mode finds, filters, pagination, validation.

The corpus is ingested once for the module (real MiniLM embeddings, real full-text index).
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from storage.repositories import api_keys, tenants
from storage.tenancy import tenant_tx
from tests.api.helpers import assert_problem
from tests.ingest_helpers import new_collection, run_jobs, upload_text

# Hardware catalogue entries that look alike, and one long memo that mentions a part number
# once: the embedding sees "a part number like these", only full text sees the exact one.
PART_DOCS = {
    "part-a": "Part QX-8812-D: hydraulic pump seal kit for the compact loader.",
    "part-b": "Part RM-4409-A: hydraulic pump seal kit for the compact excavator.",
    "part-c": "Part TL-2290-C: hydraulic pump gasket for the compact loader.",
    "part-d": "Part VN-5517-E: hydraulic hose clamp for the compact loader.",
    "memo": ("Facilities memo: the cafeteria reopens on Monday after the renovation, the parking lot "
             "gets repainted in May, and the new ergonomic office chairs arrive next week. Purchasing "
             "also reordered KX-7734-B for the workshop."),
}
# A near miss that shares more lexemes with "KX-7734-B" ('kx', '-7734', 'b' twice) than the
# exact mention does: full text must still rank the exact identifier first.
NEAR_MISS_DOCS = {
    "exact": "Stock note: the workshop reordered KX-7734-B on Tuesday.",
    "near-miss": "Catalogue: KX-7734-D valve, class B, grade B, kx series.",
}
OTHER_DOCS = {
    "cats": "Felines frequently doze for sixteen hours a day, mostly during daylight.",
    "volcano": "Magma chambers beneath a volcano build pressure until an eruption releases it.",
    "bread": "Sourdough bread rises slowly because wild yeast ferments the flour.",
    "chess": "In chess, castling moves the king two squares toward a rook.",
    "tides": "Ocean tides follow the gravitational pull of the moon and the sun.",
    "bees": "Honeybees communicate the location of flowers with a waggle dance.",
    "rust": "Iron rusts when oxygen and water react with its surface over time.",
}
GERMAN_DOCS = {
    "de-trains": "Regional trains in Bavaria run every hour between Munich and Augsburg.",
    "de-castles": "Neuschwanstein castle was commissioned by King Ludwig II of Bavaria.",
    "de-beer": "Bavarian beer gardens serve pretzels with sweet mustard.",
}


@dataclass
class Corpus:
    client: AsyncTestClient  # type: ignore[type-arg]  # one app for the module: the model loads once
    headers: dict[str, str]
    main: str  # collection ids
    travel: str
    catalogue: str
    ids: dict[str, str]  # name -> document id
    names: dict[str, str]  # document id -> name


@pytest.fixture(scope="module")
async def corpus(settings, pool, owner_pool, worker_ctx) -> AsyncIterator[Corpus]:
    async with owner_pool.acquire() as conn:
        tenant = await tenants.create_tenant(conn, f"search-{uuid.uuid4().hex[:8]}")
    async with tenant_tx(pool, tenant.id) as conn:
        key, _ = await api_keys.create_key(conn, tenant.id, "admin")
    headers = {"Authorization": f"Bearer {key}"}
    ids: dict[str, str] = {}
    async with AsyncTestClient(app=create_app(settings)) as client:
        main = await new_collection(client, headers, "main")
        travel = await new_collection(client, headers, "travel")
        catalogue = await new_collection(client, headers, "catalogue")
        for name, text in {**PART_DOCS, **OTHER_DOCS}.items():
            kind = "part" if name in PART_DOCS else "misc"
            ids[name] = (await upload_text(client, headers, main, text,
                                           metadata={"lang": "en", "kind": kind}))["document_id"]
        for name, text in GERMAN_DOCS.items():
            meta = {"lang": "en", "region": "bavaria"}
            ids[name] = (await upload_text(client, headers, travel, text, metadata=meta))["document_id"]
        for name, text in NEAR_MISS_DOCS.items():
            ids[name] = (await upload_text(client, headers, catalogue, text, metadata={"lang": "en"}))["document_id"]
        await run_jobs(settings, worker_ctx)
        for name, doc_id in ids.items():
            r = await client.get(f"/v1/documents/{doc_id}", headers=headers)
            assert r.json()["status"] == "ready", (name, r.json()["error"])
        yield Corpus(client, headers, main, travel, catalogue, ids, {v: k for k, v in ids.items()})


@pytest.fixture
def client(corpus):
    return corpus.client


async def search(client, corpus, query, **extra):
    r = await client.post("/v1/search", json={"query": query, **extra}, headers=corpus.headers)
    assert r.status_code == 200, r.text
    return r.json()


def names(corpus, hits) -> list[str]:
    return [corpus.names[h["document_id"]] for h in hits]


async def test_exact_identifier_needs_keywords(client, corpus):
    async def ranked(mode):
        hits = (await search(client, corpus, "KX-7734-B", mode=mode, collections=[corpus.main], k=50))["hits"]
        return names(corpus, hits)

    vector, keyword, hybrid = await ranked("vector"), await ranked("keyword"), await ranked("hybrid")
    # The premise: the embedding alone prefers the look-alike catalogue entries.
    assert vector[0] in {"part-a", "part-b", "part-c", "part-d"}, vector
    assert vector.index("memo") > 0
    assert keyword == ["memo"], keyword
    assert hybrid[0] == "memo", hybrid


async def test_keyword_ranks_the_exact_identifier_above_near_misses(client, corpus):
    for query in ("KX-7734-B", "kx-7734-b"):
        hits = (await search(client, corpus, query, mode="keyword", collections=[corpus.catalogue]))["hits"]
        assert names(corpus, hits) == ["exact", "near-miss"], query


async def test_paraphrase_needs_vectors(client, corpus):
    query = "how long do cats sleep"
    keyword = names(corpus, (await search(client, corpus, query, mode="keyword"))["hits"])
    vector = names(corpus, (await search(client, corpus, query, mode="vector"))["hits"])
    hybrid = names(corpus, (await search(client, corpus, query, mode="hybrid"))["hits"])
    assert keyword == []  # no word in common with "Felines frequently doze ..." (nor any other)
    assert vector[0] == "cats", vector
    assert hybrid[0] == "cats", hybrid


async def test_modes_return_their_shapes(client, corpus):
    all_docs = len(corpus.ids)
    vector = await search(client, corpus, "hydraulic pump seal", mode="vector", k=50)
    assert vector["mode"] == "vector" and vector["took_ms"] >= 0
    assert len(vector["hits"]) == all_docs  # one chunk per document, every one is a candidate
    assert [h["vector_rank"] for h in vector["hits"]] == list(range(1, all_docs + 1))
    assert all(h["keyword_rank"] is None for h in vector["hits"])

    keyword = await search(client, corpus, "hydraulic pump seal", mode="keyword", k=50)
    assert keyword["mode"] == "keyword"
    assert set(names(corpus, keyword["hits"])) == {"part-a", "part-b", "part-c", "part-d"}
    assert [h["keyword_rank"] for h in keyword["hits"]] == [1, 2, 3, 4]
    assert all(h["vector_rank"] is None for h in keyword["hits"])
    assert names(corpus, keyword["hits"])[:2] in (["part-a", "part-b"], ["part-b", "part-a"])  # all 3 words

    hybrid = await search(client, corpus, "hydraulic pump seal", k=50)
    assert hybrid["mode"] == "hybrid"
    assert len(hybrid["hits"]) == all_docs
    both = [h for h in hybrid["hits"] if h["vector_rank"] and h["keyword_rank"]]
    assert {corpus.names[h["document_id"]] for h in both} == {"part-a", "part-b", "part-c", "part-d"}
    assert all(h["vector_rank"] for h in hybrid["hits"])
    for result in (vector, keyword, hybrid):
        scores = [h["score"] for h in result["hits"]]
        assert scores == sorted(scores, reverse=True)
    top = hybrid["hits"][0]
    assert top["score"] == pytest.approx(1 / (60 + top["vector_rank"]) + 1 / (60 + top["keyword_rank"]))
    top_name = corpus.names[top["document_id"]]
    assert top["collection_id"] == corpus.main and top_name in PART_DOCS and top["title"] == ""
    assert top["text"] == PART_DOCS[top_name] and top["metadata"]["kind"] == "part"
    assert (top["ord"], top["char_start"], top["char_end"]) == (0, 0, len(top["text"]))


async def test_highlights_mark_the_query_words(client, corpus):
    for mode in ("hybrid", "keyword"):
        hit = (await search(client, corpus, "waggle dance", mode=mode, k=1))["hits"][0]
        assert corpus.names[hit["document_id"]] == "bees"
        assert "<mark>waggle</mark>" in hit["highlight"] and "<mark>dance</mark>" in hit["highlight"]


async def test_collections_filter(client, corpus):
    for mode in ("hybrid", "vector", "keyword"):
        hits = (await search(client, corpus, "king of Bavaria castle", mode=mode, collections=[corpus.travel],
                             k=50))["hits"]
        assert hits and {h["collection_id"] for h in hits} == {corpus.travel}, mode
        assert names(corpus, hits)[0] == "de-castles", mode
        # The chess document mentions a king too, but lives in the other collection.
        unfiltered = names(corpus, (await search(client, corpus, "king", mode=mode, k=50))["hits"])
        filtered = names(corpus, (await search(client, corpus, "king", mode=mode, k=50,
                                               collections=[corpus.travel]))["hits"])
        assert "chess" in unfiltered and "chess" not in filtered, mode
    both = (await search(client, corpus, "king", collections=[corpus.travel, corpus.main], k=50))["hits"]
    assert {"chess", "de-castles"} <= set(names(corpus, both))
    assert (await search(client, corpus, "king", collections=[str(uuid.uuid4())]))["hits"] == []


async def test_metadata_filter(client, corpus):
    for mode in ("hybrid", "vector", "keyword"):
        hits = (await search(client, corpus, "compact loader hydraulic", mode=mode, k=50,
                             filter={"metadata": {"kind": "misc"}}))["hits"]
        assert hits or mode == "keyword"
        assert not set(names(corpus, hits)) & set(PART_DOCS), mode
        assert all(h["metadata"]["kind"] == "misc" for h in hits), mode
        bavaria = (await search(client, corpus, "beer", mode=mode, k=50,
                                filter={"metadata": {"region": "bavaria", "lang": "en"}}))["hits"]
        assert bavaria and set(names(corpus, bavaria)) <= set(GERMAN_DOCS), mode
    none = await search(client, corpus, "beer", filter={"metadata": {"region": "tyrol"}})
    assert none["hits"] == [] and none["next_cursor"] is None


async def test_pagination_with_cursor(client, corpus):
    seen: list[str] = []
    body = {"query": "hydraulic pump parts for machines", "k": 4}
    cursor, pages = None, 0
    while True:
        result = await search(client, corpus, **body, **({"cursor": cursor} if cursor else {}))
        assert len(result["hits"]) <= 4
        seen += [h["document_id"] for h in result["hits"]]
        pages += 1
        cursor = result["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == len(corpus.ids)
    assert pages == -(-len(corpus.ids) // 4)
    first_page = (await search(client, corpus, **body))["hits"]
    unpaged = (await search(client, corpus, body["query"], k=50))["hits"]
    assert [h["document_id"] for h in unpaged] == seen
    assert [h["document_id"] for h in first_page] == seen[:4]

    cursor = (await search(client, corpus, **body))["next_cursor"]
    for other in ({"query": "volcano"}, {"k": 5}, {"mode": "keyword"}, {"collections": [corpus.main]}):
        r = await client.post("/v1/search", json={**body, **other, "cursor": cursor}, headers=corpus.headers)
        assert_problem(r, 400)


def _forged_cursor(offset, body) -> str:
    fingerprint = hashlib.sha256(msgspec.json.encode(
        [body["query"], None, None, body["k"], "hybrid"])).hexdigest()[:16]
    return base64.urlsafe_b64encode(msgspec.json.encode([offset, fingerprint])).decode().rstrip("=")


async def test_invalid_cursors_are_400(client, corpus):
    for cursor in ("garbage!", "W10", base64.urlsafe_b64encode(b'["x", "y"]').decode()):
        r = await client.post("/v1/search", json={"query": "tides", "cursor": cursor}, headers=corpus.headers)
        assert_problem(r, 400)


async def test_forged_cursor_offsets_are_400(client, corpus):
    """Fingerprints are computable: a cursor's offset must still be checked."""
    body = {"query": "tides", "k": 3}
    assert _forged_cursor(3, body) == (await search(client, corpus, "tides", k=3, mode="hybrid"))["next_cursor"]
    for offset in (-5, 10**9, True, 2.5):
        r = await client.post("/v1/search", json={**body, "cursor": _forged_cursor(offset, body)},
                              headers=corpus.headers)
        assert_problem(r, 400)


INVALID_REQUESTS = [
    {"query": ""}, {"query": "   \n "}, {"query": "x" * 2001}, {},
    {"query": "tides", "k": 0}, {"query": "tides", "k": 51}, {"query": "tides", "k": "ten"},
    {"query": "tides", "mode": "fuzzy"}, {"query": "tides", "colour": "red"},
    {"query": "tides", "collections": ["not-a-uuid"]}, {"query": "tides", "filter": {"metadata": [1]}},
    {"query": "tides", "filter": {"lang": "en"}},
]


async def test_invalid_requests_are_422(client, corpus):
    for body in INVALID_REQUESTS:
        r = await client.post("/v1/search", json=body, headers=corpus.headers)
        assert r.status_code == 422, (body, r.text)
        assert_problem(r, 422)


async def test_k_bounds(client, corpus):
    assert len((await search(client, corpus, "tides", k=1))["hits"]) == 1
    assert len((await search(client, corpus, "tides", k=50))["hits"]) == len(corpus.ids)


async def test_stopword_only_query(client, corpus):
    keyword = await search(client, corpus, "the and of", mode="keyword")
    assert keyword["hits"] == []
    hybrid = await search(client, corpus, "the and of", k=3)
    assert len(hybrid["hits"]) == 3
    assert all(h["keyword_rank"] is None and h["highlight"] is None for h in hybrid["hits"])
