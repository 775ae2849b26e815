"""Parsing and chunking of documents in killable worker processes (rag.isolation).

Each worker loads the tokenizer once, then parses and chunks one document per call under the
pool's memory limit and wall-clock timeout. The result crosses back as one msgpack message
(chunks are msgspec Structs: faster than pickling tens of thousands of objects).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from rag.chunking import Chunk, HFTokenizer, chunk_document
from rag.isolation import IsolatedPool
from rag.parsing import ParsedDocument, parse_file

__all__ = ["ParsePool", "ParsedChunks", "Parser"]

Parser = Callable[[Path, str], ParsedDocument]


class ParsedChunks(msgspec.Struct, frozen=True):
    title: str | None
    chunks: list[Chunk]
    parse_ms: float
    chunk_ms: float


_decoder = msgspec.msgpack.Decoder(ParsedChunks)
_tokenizer: HFTokenizer | None = None  # in each worker, from _load_tokenizer


def _load_tokenizer(path: str) -> None:
    global _tokenizer
    _tokenizer = HFTokenizer.from_file(path)


def _parse_and_chunk(parse: Parser, path: Path, fmt: str, max_tokens: int, overlap_tokens: int) -> bytes:
    assert _tokenizer is not None, "the worker was started without its tokenizer"
    started = time.perf_counter()
    parsed = parse(path, fmt)
    parsed_at = time.perf_counter()
    chunks = chunk_document(parsed, _tokenizer, max_tokens, overlap_tokens)
    chunked_at = time.perf_counter()
    return msgspec.msgpack.encode(ParsedChunks(
        title=parsed.title, chunks=chunks,
        parse_ms=(parsed_at - started) * 1000, chunk_ms=(chunked_at - parsed_at) * 1000,
    ))


class ParsePool:
    """`parse_and_chunk` a file in a worker process; errors are the parsers' own (ParseError,
    UnsupportedFormat) or rag.isolation's (timeout, memory, crash), all content errors.

    `parse` is the parsing function the workers call (a module-level function: it travels by
    reference); tests pass a hostile one.
    """

    def __init__(
        self, tokenizer_path: str | Path, *, workers: int, timeout_s: float, max_memory_mb: int,
        parse: Parser = parse_file,
    ) -> None:
        self._parse = parse
        self.isolated = IsolatedPool(
            what="parsing", workers=workers, timeout_s=timeout_s, max_memory_mb=max_memory_mb,
            setup=_load_tokenizer, setup_args=(str(tokenizer_path),),
        )

    async def start(self) -> None:
        await self.isolated.start()

    async def parse_and_chunk(self, path: Path, fmt: str, *, max_tokens: int, overlap_tokens: int) -> ParsedChunks:
        encoded = await self.isolated.run(_parse_and_chunk, self._parse, path, fmt, max_tokens, overlap_tokens)
        return _decoder.decode(encoded)

    def close(self) -> None:
        self.isolated.close()
