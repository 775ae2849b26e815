"""Token-aware, heading-aware chunking with overlap and character offsets.

A chunk never crosses a section boundary, so it has one heading and one page. Inside a section,
windows hold at most `max_tokens` tokens and end at the best boundary in the last quarter of the
window (paragraph break > line break > sentence end > word boundary); the next window starts about
`overlap_tokens` earlier, at a sentence start when there is one in the overlap. Each section is
tokenised once; the windows are cut from its token offsets.
"""

from __future__ import annotations

import os
from typing import Protocol

import msgspec
from tokenizers import Tokenizer

from rag.parsing import ParsedDocument

__all__ = ["SECTION_SEPARATOR", "Chunk", "HFTokenizer", "TokenOffsets", "chunk_document", "document_text"]

SECTION_SEPARATOR = "\n\n"
# A "token" wider than this (BERT turns any word over 100 characters into one [UNK]) is
# re-tokenised in pieces of this many characters, so that a base64 blob or a long run of symbols
# cannot make a chunk of a few tokens and a megabyte of text.
MAX_TOKEN_CHARS = 50
_PIECE_CHARS = 20_000

# Boundary strength between two tokens: inside a word, where a word meets punctuation, a space,
# after a sentence end, a line break, a blank line.
_NONE, _JOIN, _WORD, _SENTENCE, _LINE, _PARAGRAPH = range(6)
_SENTENCE_END = frozenset(".!?\u2026")  # . ! ? …
_CJK_SENTENCE_END = frozenset("\u3002\uff01\uff1f")  # CJK full stop, !, ?: no space follows them
_CLOSERS = "\"')]}\u2019\u201d\u00bb"  # closing quotes and brackets after a sentence end


class Chunk(msgspec.Struct, frozen=True):
    ord: int
    text: str
    heading: str | None
    page: int | None
    char_start: int  # offsets into document_text(doc): text == document_text(doc)[char_start:char_end]
    char_end: int
    token_count: int


class TokenOffsets(Protocol):
    def offsets(self, text: str) -> list[tuple[int, int]]:
        """The character span of each token of `text`, in order, without special tokens."""
        ...


class HFTokenizer:
    """A Hugging Face `tokenizers.Tokenizer` as TokenOffsets (a private copy: truncation and padding,
    which tokenizer.json files often configure, would silently drop or invent tokens)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> HFTokenizer:
        return cls(Tokenizer.from_file(os.fspath(path)))

    def offsets(self, text: str) -> list[tuple[int, int]]:
        if len(text) <= _PIECE_CHARS:
            return self._tokenizer.encode(text, add_special_tokens=False).offsets
        # Long texts are cut at whitespace (which no token spans, for whitespace-splitting tokenizers
        # like BERT's, so the tokens are the same) and encoded as a batch: in parallel, ~3x faster.
        starts, pieces = [], []
        position = 0
        while position < len(text):
            cut = min(len(text), position + _PIECE_CHARS)
            if cut < len(text):
                space = max(text.rfind("\n", position, cut), text.rfind(" ", position, cut))
                cut = space if space > position else cut
            starts.append(position)
            pieces.append(text[position:cut])
            position = cut
        encodings = self._tokenizer.encode_batch(pieces, add_special_tokens=False)
        return [
            (start + base, end + base)
            for base, encoding in zip(starts, encodings, strict=True)
            for start, end in encoding.offsets
        ]

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)


def document_text(doc: ParsedDocument) -> str:
    """The canonical text of a document, which chunk offsets refer to: sections joined by a blank line."""
    return SECTION_SEPARATOR.join(section.text for section in doc.sections)


def chunk_document(
    doc: ParsedDocument, tokenizer: TokenOffsets, max_tokens: int = 256, overlap_tokens: int = 32
) -> list[Chunk]:
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    if not 0 <= overlap_tokens < max_tokens:
        raise ValueError(f"overlap_tokens must be in [0, max_tokens={max_tokens}), not {overlap_tokens}")
    chunks: list[Chunk] = []
    base = 0
    for section in doc.sections:
        text = section.text
        spans = _spans(text, tokenizer)
        for start, end, count in _windows(text, spans, max_tokens, overlap_tokens, tokenizer):
            chunks.append(Chunk(
                ord=len(chunks), text=text[start:end], heading=section.heading, page=section.page,
                char_start=base + start, char_end=base + end, token_count=count,
            ))
        base += len(text) + len(SECTION_SEPARATOR)
    return chunks


def _spans(text: str, tokenizer: TokenOffsets) -> list[tuple[int, int]]:
    """Token spans made safe to cut at: in order, not overlapping, within the text, none wider than
    MAX_TOKEN_CHARS. Byte-level tokenizers give several tokens the same span (one emoji, three
    tokens): those become empty spans, still counted as tokens."""
    spans: list[tuple[int, int]] = []
    last, length = 0, len(text)
    for start, end in tokenizer.offsets(text):
        start = min(max(start, last), length)
        end = max(min(end, length), start)
        if end - start > MAX_TOKEN_CHARS:
            spans.extend(_split_giant(text, start, end, tokenizer))
        else:
            spans.append((start, end))
        last = end
    return spans


def _split_giant(text: str, start: int, end: int, tokenizer: TokenOffsets) -> list[tuple[int, int]]:
    """The tokens of a giant token's text re-tokenised in MAX_TOKEN_CHARS pieces (the pieces of a
    base64 blob, not one [UNK] for all of it), so that windows over it stay small. The pieces go to
    the tokenizer in one call, joined by spaces; offsets are mapped back to the text."""
    width = MAX_TOKEN_CHARS
    pieces = range(start, end, width)
    joined = " ".join(text[piece:piece + width] for piece in pieces[:-1]) + " " * (len(pieces) > 1)
    joined += text[pieces[-1]:end]
    spans: list[tuple[int, int]] = []
    for token_start, token_end in tokenizer.offsets(joined):
        if token_end <= token_start:
            continue
        k = (token_end - 1) // (width + 1)  # the piece the token ends in; k spaces were added before it
        piece_start = start + k * width
        piece_end = min(end, piece_start + width)
        spans.append((max(start + token_start - k, piece_start), min(start + token_end - k, piece_end)))
    # nothing the tokenizer would count (or nothing it sees): the pieces themselves are the units
    return spans or [(piece, min(end, piece + width)) for piece in pieces]


def _windows(
    text: str, spans: list[tuple[int, int]], max_tokens: int, overlap: int, tokenizer: TokenOffsets
) -> list[tuple[int, int, int]]:
    """(char_start, char_end, token_count) of each chunk of one section, whitespace trimmed."""
    n = len(spans)
    if n <= max_tokens:
        trimmed = _trim(text, 0, len(text))
        return [(*trimmed, n)] if trimmed else []
    lookback = max(1, max_tokens // 4)
    windows: list[tuple[int, int, int]] = []
    first, char_start = 0, 0  # first token of the window; where its text starts
    while True:
        limit = first + max_tokens
        if limit >= n:
            end, char_end = n, len(text)
        else:
            end = _best_cut(text, spans, max(first + 1, limit - lookback), limit)
            char_end = spans[end - 1][1]
        tokens = end - first
        if (end < n and _boundary(text, spans, end) == _NONE) or (
            first > 0 and _boundary(text, spans, first) == _NONE
        ):
            # Cut inside a word (rare: only words longer than the look-back, or scripts without
            # spaces): its pieces tokenised on their own ("##ization" -> "iz", "##ation") can be
            # more tokens than in context, so count the chunk's own text and shrink to fit.
            tokens = len(tokenizer.offsets(text[char_start:char_end]))
            while tokens > max_tokens and end - first > 1:
                end -= min(tokens - max_tokens, end - first - 1)
                char_end = spans[end - 1][1]
                tokens = len(tokenizer.offsets(text[char_start:char_end]))
        trimmed = _trim(text, char_start, char_end)
        if trimmed:
            windows.append((*trimmed, tokens))
        if end == n:
            return windows
        if overlap == 0:
            # Start where this chunk ended (not at the next token) so characters no token covers
            # are still in some chunk.
            first, char_start = end, char_end
        else:
            lo = max(first + 1, end - overlap)
            first = _best_start(text, spans, lo, max(lo, end - overlap // 2))
            char_start = spans[first - 1][1]


def _best_cut(text: str, spans: list[tuple[int, int]], lo: int, hi: int) -> int:
    """The token index in [lo, hi] to end the window before: the strongest boundary, latest first."""
    best, best_strength = hi, _NONE
    for cut in range(hi, lo - 1, -1):
        strength = _boundary(text, spans, cut)
        if strength > best_strength:
            best, best_strength = cut, strength
            if strength == _PARAGRAPH:
                break
    return best


def _best_start(text: str, spans: list[tuple[int, int]], lo: int, hi: int) -> int:
    """The token index in [lo, hi] to start the next window at: the strongest boundary, earliest
    first, so the overlap stays close to the requested size."""
    best, best_strength = lo, _NONE
    for start in range(lo, hi + 1):
        strength = min(_boundary(text, spans, start), _SENTENCE)  # any sentence start is as good
        if strength > best_strength:
            best, best_strength = start, strength
            if strength == _SENTENCE:
                break
    return best


def _boundary(text: str, spans: list[tuple[int, int]], index: int) -> int:
    """How good a place the gap before token `index` (after token index-1) is to cut."""
    (prev_start, gap_start), (gap_end, next_end) = spans[index - 1], spans[index]
    # Byte-level BPE tokens carry their leading space ("Ġword"): count it as part of the gap.
    while gap_end < next_end and text[gap_end].isspace():
        gap_end += 1
    while gap_start > prev_start and text[gap_start - 1].isspace():
        gap_start -= 1
    if gap_end <= gap_start:  # no space between the tokens
        if gap_start == 0 or gap_end >= len(text):
            return _NONE
        before, after = text[gap_start - 1], text[gap_end]
        if before in _CJK_SENTENCE_END:
            return _SENTENCE
        return _NONE if before.isalnum() and after.isalnum() else _JOIN
    gap = text[gap_start:gap_end]
    if "\n" in gap:
        return _PARAGRAPH if gap.count("\n") >= 2 else _LINE
    if not gap.isspace():
        return _NONE  # characters the tokenizer skipped (control characters, ...), not a word gap
    end, floor = gap_start, max(0, gap_start - 4)
    while end > floor and text[end - 1] in _CLOSERS:  # 'He said "stop." Then' ends a sentence too
        end -= 1
    return _SENTENCE if end > 0 and text[end - 1] in _SENTENCE_END else _WORD


def _trim(text: str, start: int, end: int) -> tuple[int, int] | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if start < end else None
