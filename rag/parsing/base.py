"""The parsed-document model, the parsing errors and the text normalisation every parser applies."""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable

import msgspec

from core.errors import Unprocessable, UnsupportedMediaType

__all__ = [
    "FORMATS", "MAX_TEXT_CHARS", "ParseError", "ParsedDocument", "Section", "UnsupportedFormat",
    "clean_heading", "decode_utf", "finish", "normalise", "reason",
]

# format -> canonical mime type; the keys are the formats the platform ingests.
FORMATS: dict[str, str] = {
    "txt": "text/plain",
    "md": "text/markdown",
    "html": "text/html",
    "pdf": "application/pdf",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
}

# Guard against documents that would blow up memory downstream (chunks, embeddings, one transaction).
MAX_TEXT_CHARS = 50_000_000
_MAX_HEADING_CHARS = 300


class Section(msgspec.Struct, frozen=True):
    text: str
    heading: str | None = None  # nearest heading (markdown '#', html h1-h6, docx Heading styles)
    page: int | None = None  # 1-based page for PDFs


class ParsedDocument(msgspec.Struct):
    format: str  # 'txt' | 'md' | 'html' | 'pdf' | 'docx'
    title: str | None
    sections: list[Section]


class ParseError(Unprocessable):
    """The document is in a supported format but cannot be turned into text; the detail says why."""

    title = "Document could not be parsed"


class UnsupportedFormat(UnsupportedMediaType):
    """The upload is not one of FORMATS."""

    title = "Unsupported document format"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail, supported=sorted(FORMATS))


# C0 controls other than \t and \n (which survive) — \x00 above all: Postgres text cannot store it.
_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
# Lone surrogates (from broken PDFs or surrogateescape) cannot be encoded as UTF-8.
_SURROGATES = re.compile(r"[\ud800-\udfff]")
_NEWLINES = str.maketrans({"\v": "\n", "\f": "\n", "\u2028": "\n", "\u2029": "\n\n", "\x85": "\n"})
# Trailing blanks of each line. The look-behind starts a match only where a run of blanks starts
# and the possessive `++` never gives characters back: linear. (Plain `[^\S\n]+$` retried from
# every blank of a run that a letter ends: quadratic, 40,000 spaces took seconds.)
_TRAILING_SPACE = re.compile(r"(?<![^\S\n])[^\S\n]++$", re.MULTILINE)
_BLANK_RUNS = re.compile(r"\n{3,}")
_WHITESPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Canonical text: LF line ends, no NUL/control chars, no trailing spaces, at most one blank line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(_NEWLINES)
    text = _CONTROLS.sub("", text)
    text = _SURROGATES.sub("\ufffd", text)
    text = _TRAILING_SPACE.sub("", text)
    return _BLANK_RUNS.sub("\n\n", text).strip()


def clean_heading(text: str | None) -> str | None:
    """A heading on one line, whitespace collapsed; None when nothing is left."""
    if text is None:
        return None
    text = _SURROGATES.sub("\ufffd", _CONTROLS.sub("", _WHITESPACE.sub(" ", text))).strip()
    if len(text) > _MAX_HEADING_CHARS:
        text = text[: _MAX_HEADING_CHARS - 1].rstrip() + "…"
    return text or None


def finish(fmt: str, title: str | None, sections: Iterable[Section]) -> ParsedDocument:
    """Normalise every section, drop empty ones, and refuse a document without any text."""
    kept: list[Section] = []
    total = 0
    for section in sections:
        text = normalise(section.text)
        if not text:
            continue
        total += len(text)
        if total > MAX_TEXT_CHARS:
            raise ParseError(f"the document has more than {MAX_TEXT_CHARS:,} characters of text")
        kept.append(Section(text=text, heading=clean_heading(section.heading), page=section.page))
    if not kept:
        raise ParseError("the document contains no text")
    return ParsedDocument(format=fmt, title=clean_heading(title), sections=kept)


_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),  # before UTF-16: FF FE 00 00
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)


def decode_utf(data: bytes) -> str:
    """UTF-8 (with or without BOM), or UTF-16/32 when a BOM says so; anything else is a ParseError."""
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), "utf-8")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        name = encoding.removesuffix("-sig").upper()
        raise ParseError(
            f"the file is not valid {name} text (invalid byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}); save it as UTF-8 and upload it again"
        ) from None


def reason(exc: BaseException) -> str:
    """A library exception as a short clause for a ParseError detail."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:199] + "…"
