"""Seeding a corpus through the platform's real API, and the query sets the users ask.

Documents come from perf/corpus.py (stdlib docstrings first, then Markov text), in a fixed
order per seed, each with a stable `uri`: uploading the same document again is a no-op, and a
data dir seeded before is topped up from where it stopped (the first N documents of the order
are the ones already there). Upload is JSON text, four requests in flight; then the run waits
until the arq worker has ingested everything (document status), calibrating its estimate of
chunks per character after each wave until the collection holds >= the target chunk count.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from perf.corpus import Doc, corpus_documents, exact_queries, natural_queries
from perf.suite.platform import log

__all__ = ["BENCH_TENANT", "Corpus", "build_queries", "existing_corpus", "seed_corpus"]

CORPUS_COLLECTION = "perf-corpus"
BENCH_TENANT = "perf-search-a"
"""The tenant perf/search_bench.py builds its 50,000-chunk corpus in (`--corpus-from`)."""
UPLOAD_COLLECTION = "perf-uploads"
_MAX_DOC_CHARS = 800_000  # under QUARRY_MAX_JSON_BYTES (1 MiB) with JSON escaping


@dataclass
class Corpus:
    collection_id: str
    upload_collection_id: str
    documents: int
    chunks: int
    failed: int
    seeded_now: int = 0
    seconds: float = 0.0
    chunks_per_s: float | None = None
    samples: list[tuple[str, str]] = field(default_factory=list)
    """(uri, text) of some seeded documents: the source of exact-phrase queries."""
    collection_ids: list[str] = field(default_factory=list)
    """Every collection of the corpus (a copied benchmark corpus spans several); searches are
    scoped to these. Seeded corpora have just `collection_id`."""

    @property
    def scope(self) -> list[str]:
        return self.collection_ids or [self.collection_id]


def _collection(client: httpx.Client, name: str) -> str:
    cursor: str | None = None
    while True:
        page = client.get("/v1/collections", params={"limit": 200, **({"cursor": cursor} if cursor else {})})
        page.raise_for_status()
        body = page.json()
        for item in body["items"]:
            if item["name"] == name:
                return str(item["id"])
        cursor = body.get("next_cursor")
        if not cursor:
            break
    created = client.post("/v1/collections", json={"name": name, "description": "perf suite corpus"})
    created.raise_for_status()
    return str(created.json()["id"])


def _documents(client: httpx.Client, collection_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 200, "collection_id": collection_id}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/documents", params=params)
        page.raise_for_status()
        body = page.json()
        items += body["items"]
        cursor = body.get("next_cursor")
        if not cursor:
            return items


def _count(docs: list[dict[str, Any]]) -> dict[str, int]:
    out = {"documents": len(docs), "chunks": 0, "pending": 0, "failed": 0, "ready": 0}
    for d in docs:
        if d["status"] == "ready":
            out["ready"] += 1
            out["chunks"] += int(d.get("chunk_count") or 0)
        elif d["status"] == "failed":
            out["failed"] += 1
        else:
            out["pending"] += 1
    return out


def _upload(client: httpx.Client, collection_id: str, doc: Doc) -> None:
    body = {"text": doc.text[:_MAX_DOC_CHARS], "title": doc.title[:500], "uri": doc.uri, "format": "txt",
            "metadata": {"kind": doc.kind}}
    for attempt in range(5):
        response = client.post(f"/v1/collections/{collection_id}/documents", json=body)
        if response.status_code in (429, 503):
            time.sleep(float(response.headers.get("retry-after", "1") or 1) * (attempt + 1))
            continue
        response.raise_for_status()
        return
    response.raise_for_status()


def _wait_ingested(client: httpx.Client, collection_id: str, timeout_s: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    last_log = 0.0
    while True:
        counts = _count(_documents(client, collection_id))
        if counts["pending"] == 0:
            return counts
        if time.monotonic() - last_log > 15:
            log(f"  ingesting: {counts['ready']} ready ({counts['chunks']} chunks), {counts['pending']} pending, "
                f"{counts['failed']} failed")
            last_log = time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"ingestion not finished after {timeout_s:.0f} s: {counts}")
        time.sleep(2.0)


def seed_corpus(base_url: str, key: str, target_chunks: int, seed: int = 0, timeout_s: float = 7200.0,
                synthetic_words: int = 1500) -> Corpus:
    """Top the `perf-corpus` collection up to >= `target_chunks` ready chunks (see module doc)."""
    started = time.monotonic()
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        collection_id = _collection(client, CORPUS_COLLECTION)
        upload_collection_id = _collection(client, UPLOAD_COLLECTION)
        counts = _wait_ingested(client, collection_id, timeout_s)
        existing = counts["documents"]
        log(f"corpus: {counts['chunks']} chunks in {existing} documents present (target {target_chunks})")
        source: Iterator[Doc] = corpus_documents(seed=seed, synthetic_words=synthetic_words)
        for _ in range(existing):
            next(source)
        chars_per_chunk = 900.0  # a first guess, recalibrated after every wave
        uploaded = 0
        start_chunks = counts["chunks"]
        samples: list[tuple[str, str]] = []
        with ThreadPoolExecutor(max_workers=4) as pool:
            for _wave in range(12):
                missing = target_chunks - counts["chunks"]
                if missing <= 0:
                    break
                wave: list[Doc] = []
                estimate = 0.0
                # A small first wave calibrates the estimate; later ones overshoot a little.
                wave_target = min(missing, 200) * 1.05 if _wave == 0 else missing * 1.05 + 5
                while estimate < wave_target:
                    doc = next(source)
                    wave.append(doc)
                    estimate += max(1.0, len(doc.text[:_MAX_DOC_CHARS]) / chars_per_chunk)
                wave_chars = sum(len(d.text[:_MAX_DOC_CHARS]) for d in wave)
                before = counts["chunks"]
                log(f"corpus: uploading {len(wave)} documents (~{estimate:.0f} chunks)")
                list(pool.map(lambda d: _upload(client, collection_id, d), wave))
                uploaded += len(wave)
                samples += _pieces(wave)
                counts = _wait_ingested(client, collection_id, timeout_s)
                made = counts["chunks"] - before
                if made > 0:
                    chars_per_chunk = wave_chars / made
        docs = _documents(client, collection_id)
        final = _count(docs)
        seconds = time.monotonic() - started
        if not samples:
            rng = random.Random(f"{seed}:samples")  # noqa: S311
            source = corpus_documents(seed=seed, synthetic_words=synthetic_words)
            picked = [next(source) for _ in range(min(len(docs), 400))]
            samples = _pieces(rng.sample(picked, min(200, len(picked))))
        made = final["chunks"] - start_chunks
        corpus = Corpus(collection_id=collection_id, upload_collection_id=upload_collection_id,
                        documents=final["documents"], chunks=final["chunks"], failed=final["failed"],
                        seeded_now=uploaded, seconds=round(seconds, 1),
                        chunks_per_s=round(made / seconds, 2) if uploaded and made > 0 else None, samples=samples)
    log(f"corpus ready: {corpus.chunks} chunks in {corpus.documents} documents "
        f"({corpus.seeded_now} uploaded now in {corpus.seconds:.0f} s)")
    return corpus


def existing_corpus(base_url: str, key: str, seed: int = 0, synthetic_words: int = 1500) -> Corpus:
    """A corpus that is already in the tenant (a copy of perf/search_bench.py's database): every
    collection but the uploads one, nothing seeded. Exact-phrase queries come from the first
    documents of perf/corpus.py's order (the stdlib docstrings, which the benchmark's
    `stdlib-docs` collection holds in full)."""
    started = time.monotonic()
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        upload_collection_id = _collection(client, UPLOAD_COLLECTION)
        page = client.get("/v1/collections", params={"limit": 200})
        page.raise_for_status()
        ids = [str(c["id"]) for c in page.json()["items"] if str(c["id"]) != upload_collection_id]
        if not ids:
            raise SystemExit("quarry perf: --corpus-from: the copied database has no corpus collection")
        counts = _count([d for cid in ids for d in _documents(client, cid)])
    source = corpus_documents(seed=seed, synthetic_words=synthetic_words)
    picked = [next(source) for _ in range(400)]
    samples = _pieces(random.Random(f"{seed}:samples").sample(picked, 200))  # noqa: S311
    log(f"corpus (copied): {counts['chunks']} chunks in {counts['documents']} documents, {len(ids)} collections "
        f"(checked in {time.monotonic() - started:.0f} s)")
    return Corpus(collection_id=ids[0], upload_collection_id=upload_collection_id, documents=counts["documents"],
                  chunks=counts["chunks"], failed=counts["failed"], seconds=round(time.monotonic() - started, 1),
                  samples=samples, collection_ids=ids)


def _pieces(docs: list[Doc], per_doc: int = 3, chars: int = 1200) -> list[tuple[str, str]]:
    """Chunk-sized pieces of documents: where exact-phrase queries are copied from."""
    return [(d.uri, d.text[i * chars:(i + 1) * chars]) for d in docs[:200] for i in range(per_doc)
            if len(d.text) > i * chars + 200]


def build_queries(corpus: Corpus, n: int, seed: int = 0) -> list[str]:
    """`n` queries, half natural questions and half exact phrases from seeded text, in a seeded
    random order: the order is the popularity rank of the Zipf mix."""
    natural = [q.text for q in natural_queries(n - n // 2, seed)]
    exact = [q.text for q in exact_queries(corpus.samples, n // 2, seed)]
    queries = list(dict.fromkeys(natural + exact))
    random.Random(f"{seed}:rank").shuffle(queries)  # noqa: S311
    return queries[:n]


def chat_questions(n: int, seed: int = 0) -> list[str]:
    return [q.text for q in natural_queries(n, seed + 1)]
