"""Uploaded bytes -> text sections (txt, md, html, pdf, docx).

`parse_file` is synchronous and CPU-bound: callers run it in a thread (or a worker process).
Every failure that is the document's fault is a `ParseError` (422) whose detail says why, and an
unknown format is `UnsupportedFormat` (415); no other library exception escapes. Only an OSError
from opening the file itself propagates: that is the platform's problem, not the document's.
"""

from __future__ import annotations

from pathlib import Path

from rag.parsing.base import FORMATS, ParsedDocument, ParseError, Section, UnsupportedFormat, reason
from rag.parsing.base import decode_utf as _decode_utf
from rag.parsing.detect import detect_format
from rag.parsing.markup import decode_html as _decode_html
from rag.parsing.markup import parse_html as _parse_html
from rag.parsing.pdf import MAX_PDF_PAGES
from rag.parsing.pdf import parse_pdf as _parse_pdf
from rag.parsing.plain import parse_markdown as _parse_markdown
from rag.parsing.plain import parse_plain as _parse_plain
from rag.parsing.word import parse_docx as _parse_docx

__all__ = [
    "FORMATS", "MAX_PDF_PAGES", "ParseError", "ParsedDocument", "Section", "UnsupportedFormat",
    "detect_format", "parse_file", "parse_text",
]

_TEXT_FORMATS = ("txt", "md", "html")


def parse_file(path: Path, fmt: str) -> ParsedDocument:
    """Parse the file at `path` as `fmt` (a key of FORMATS, usually from `detect_format`)."""
    if fmt not in FORMATS:
        raise UnsupportedFormat(f"unsupported document format {fmt!r}; supported: {', '.join(FORMATS)}")
    with path.open("rb") as stream:
        if not stream.read(1):
            raise ParseError("the file is empty")
        stream.seek(0)
        try:
            if fmt == "pdf":
                return _parse_pdf(stream)
            if fmt == "docx":
                return _parse_docx(stream)
            data = stream.read()
            if fmt == "html":
                return _parse_html(_decode_html(data))
            return _parse_decoded(_decode_utf(data), fmt)
        except (ParseError, UnsupportedFormat):
            raise
        except Exception as exc:  # a library failed in a way we did not foresee: still the document's fault
            raise ParseError(f"the {fmt} document could not be parsed: {reason(exc)}") from exc


def parse_text(text: str, fmt: str = "txt") -> ParsedDocument:
    """Parse text that arrived already decoded (JSON uploads): txt, md or html."""
    if fmt not in _TEXT_FORMATS:
        raise UnsupportedFormat(
            f"format {fmt!r} cannot be sent as text; send it as a file, or use one of: "
            + ", ".join(_TEXT_FORMATS)
        )
    try:
        if fmt == "html":
            return _parse_html(text)
        return _parse_decoded(text, fmt)
    except (ParseError, UnsupportedFormat):
        raise
    except Exception as exc:
        raise ParseError(f"the {fmt} document could not be parsed: {reason(exc)}") from exc


def _parse_decoded(text: str, fmt: str) -> ParsedDocument:
    return _parse_markdown(text) if fmt == "md" else _parse_plain(text)
