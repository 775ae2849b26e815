"""Prepare a document for the index: parse → chunk → embed. No database here.

Parsing and chunking are CPU-bound and run on untrusted bytes: in a worker process of a
`ParsePool` (killable, time- and memory-bounded: rag.isolation) when the caller has one, else in
a thread. Embedding runs in the embedder's own executor. The result is written by the caller in
one transaction.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from rag.chunking import Chunk, TokenOffsets, chunk_document
from rag.embedders import Embedder
from rag.parse_pool import ParsePool
from rag.parsing import ParsedDocument, parse_file, parse_text

__all__ = ["PreparedDocument", "prepare_file", "prepare_text"]


@dataclass
class PreparedDocument:
    title: str | None
    chunks: list[Chunk]
    embeddings: npt.NDArray[np.float32]
    timings_ms: dict[str, float] = field(default_factory=dict)


async def prepare_file(
    path: Path, fmt: str, *, tokenizer: TokenOffsets, embedder: Embedder, max_tokens: int,
    overlap_tokens: int, parser: ParsePool | None = None,
) -> PreparedDocument:
    if parser is not None:
        done = await parser.parse_and_chunk(path, fmt, max_tokens=max_tokens, overlap_tokens=overlap_tokens)
        timings = {"parse": done.parse_ms, "chunk": done.chunk_ms}
        return await _embed(done.title, done.chunks, timings, embedder)
    started = time.perf_counter()
    parsed = await asyncio.to_thread(parse_file, path, fmt)
    return await _chunk_and_embed(parsed, started, tokenizer, embedder, max_tokens, overlap_tokens)


async def prepare_text(
    text: str, fmt: str, *, tokenizer: TokenOffsets, embedder: Embedder, max_tokens: int,
    overlap_tokens: int,
) -> PreparedDocument:
    started = time.perf_counter()
    parsed = await asyncio.to_thread(parse_text, text, fmt)
    return await _chunk_and_embed(parsed, started, tokenizer, embedder, max_tokens, overlap_tokens)


async def _chunk_and_embed(
    parsed: ParsedDocument, started: float, tokenizer: TokenOffsets, embedder: Embedder,
    max_tokens: int, overlap_tokens: int,
) -> PreparedDocument:
    parsed_at = time.perf_counter()
    chunks = await asyncio.to_thread(chunk_document, parsed, tokenizer, max_tokens, overlap_tokens)
    chunked_at = time.perf_counter()
    timings = {"parse": (parsed_at - started) * 1000, "chunk": (chunked_at - parsed_at) * 1000}
    return await _embed(parsed.title, chunks, timings, embedder)


async def _embed(
    title: str | None, chunks: list[Chunk], timings: dict[str, float], embedder: Embedder
) -> PreparedDocument:
    started = time.perf_counter()
    vectors = await embedder.embed([c.text for c in chunks])
    timings["embed"] = (time.perf_counter() - started) * 1000
    return PreparedDocument(title=title, chunks=chunks, embeddings=vectors, timings_ms=timings)
