"""MiniLM embedder benchmark: chunk throughput and single-query latency, printed as JSON.

    .venv/bin/python perf/embedder_bench.py [--chunks 128] [--batch 32] [--runs 200] [--threads 0]

Every figure comes with a reference measured in the same run on the same machine (see
DESIGN "Performance method"): the bare onnxruntime `session.run` on the same token ids
(the ceiling: no tokenisation, pooling or worker hop), and, for mixed-length input, a naive
pipeline that batches in arrival order and pads every text to 256 word pieces.
Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from rag.embedders.minilm import MAX_TOKENS, MiniLMEmbedder, load_tokenizer

WORDS = (
    "the tenant uploads a document and the platform splits it into chunks that are embedded "
    "stored in postgres with pgvector and retrieved by hybrid search before the agent answers "
    "questions about invoices contracts policies onboarding security incidents quarterly revenue "
    "customers support tickets password reset account access latency throughput replicas cache"
).split()


def make_text(rng: random.Random, tokenizer: Any, target_tokens: int) -> str:
    words: list[str] = []
    while True:
        words.extend(rng.choice(WORDS) for _ in range(8))
        text = " ".join(words) + "."
        if len(tokenizer.encode(text).ids) >= target_tokens:
            return text


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"p50_ms": pick(0.50), "p95_ms": pick(0.95), "p99_ms": pick(0.99),
            "mean_ms": round(statistics.fmean(ordered) * 1000, 3)}


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def raw_run(session: Any, batches: list[list[list[int]]], pad_to: int | None = None) -> None:
    """The ceiling: session.run on ready token ids (padding built here, no pooling)."""
    for batch in batches:
        width = pad_to or max(len(ids) for ids in batch)
        input_ids = np.zeros((len(batch), width), dtype=np.int64)
        mask = np.zeros_like(input_ids)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        session.run(["last_hidden_state"], {
            "input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids),
        })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=128, help="chunks of ~256 word pieces")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--runs", type=int, default=200, help="single-query latency samples")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads; 0 = cores")
    parser.add_argument("--spin", action="store_true", help="let onnxruntime workers spin-wait")
    args = parser.parse_args()

    rng = random.Random(42)  # noqa: S311 - reproducible synthetic text, not crypto
    counter = load_tokenizer()
    chunks = [make_text(rng, counter, MAX_TOKENS - 4) for _ in range(args.chunks)]
    mixed = [make_text(rng, counter, rng.randint(8, MAX_TOKENS - 4)) for _ in range(args.chunks)]
    query = "How do I reset my password when I no longer have access to my email?"

    embedder = MiniLMEmbedder(threads=args.threads, batch_size=args.batch, allow_spinning=args.spin)
    load_start = time.perf_counter()
    embedder.warm_up()
    load_s = time.perf_counter() - load_start
    session = embedder._get_session()
    tokenizer = embedder.tokenizer
    for _ in range(5):
        embedder.embed_sync([query])
    embedder.embed_sync(chunks[: args.batch])

    def ids_of(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in tokenizer.encode_batch(texts)]

    def in_batches(items: list[list[int]]) -> list[list[list[int]]]:
        return [items[i : i + args.batch] for i in range(0, len(items), args.batch)]

    chunk_ids = ids_of(chunks)
    mixed_ids = ids_of(mixed)

    # Throughput on ~256-token chunks.
    [ours_s] = timed(lambda: embedder.embed_sync(chunks), 1)
    [raw_s] = timed(lambda: raw_run(session, in_batches(chunk_ids)), 1)
    # Mixed lengths: length-sorted batches padded to their longest vs arrival order padded to 256.
    [mixed_ours_s] = timed(lambda: embedder.embed_sync(mixed), 1)
    [mixed_naive_s] = timed(lambda: raw_run(session, in_batches(mixed_ids), pad_to=MAX_TOKENS), 1)

    # Single-query latency: sync, async (adds the worker-thread hop), and bare session.run.
    query_ids = ids_of([query])
    sync_lat = timed(lambda: embedder.embed_sync([query]), args.runs)
    raw_lat = timed(lambda: raw_run(session, [query_ids]), args.runs)

    async def async_latency() -> list[float]:
        samples = []
        for _ in range(args.runs):
            start = time.perf_counter()
            await embedder.embed([query])
            samples.append(time.perf_counter() - start)
        return samples

    async_lat = asyncio.run(async_latency())
    embedder.close()

    n = len(chunks)
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "onnxruntime_threads": embedder.threads, "spinning": args.spin},
        "model": {"name": embedder.name, "dim": embedder.dim, "load_s": round(load_s, 3)},
        "throughput": {
            "chunks": n, "batch": args.batch,
            "mean_tokens_per_chunk": round(statistics.fmean(len(i) for i in chunk_ids), 1),
            "chunks_per_s": round(n / ours_s, 2),
            "tokens_per_s": round(sum(len(i) for i in chunk_ids) / ours_s, 1),
            "reference_bare_session_chunks_per_s": round(n / raw_s, 2),
            "ratio_vs_bare_session": round(raw_s / ours_s, 3),
        },
        "mixed_lengths": {
            "chunks": len(mixed),
            "mean_tokens_per_chunk": round(statistics.fmean(len(i) for i in mixed_ids), 1),
            "chunks_per_s": round(len(mixed) / mixed_ours_s, 2),
            "reference_unsorted_pad256_chunks_per_s": round(len(mixed) / mixed_naive_s, 2),
            "speedup_vs_reference": round(mixed_naive_s / mixed_ours_s, 2),
        },
        "query_latency": {
            "runs": args.runs, "query_tokens": len(query_ids[0]),
            "embed_sync": percentiles(sync_lat),
            "embed_async": percentiles(async_lat),
            "reference_bare_session": percentiles(raw_lat),
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
