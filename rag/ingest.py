"""Prepare a document for the index: parse → chunk → embed. No database here.

Parsing and chunking are CPU-bound and run in a worker thread; embedding runs in the
embedder's own executor. The result is written by the caller in one transaction.
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
    overlap_tokens: int,
) -> PreparedDocument:
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
    vectors = await embedder.embed([c.text for c in chunks])
    embedded_at = time.perf_counter()
    return PreparedDocument(
        title=parsed.title,
        chunks=chunks,
        embeddings=vectors,
        timings_ms={
            "parse": (parsed_at - started) * 1000,
            "chunk": (chunked_at - parsed_at) * 1000,
            "embed": (embedded_at - chunked_at) * 1000,
        },
    )
