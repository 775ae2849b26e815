"""DOCX via python-docx: paragraphs and tables in document order, split at Heading/Title styles."""

from __future__ import annotations

import zipfile
from typing import BinaryIO

import docx
from docx.table import Table
from docx.text.paragraph import Paragraph

from rag.parsing.base import ParsedDocument, ParseError, Section, finish, reason

__all__ = ["MAX_DOCX_UNCOMPRESSED", "parse_docx"]

# A zip bomb inflates to gigabytes of XML; real documents' parts are far below this.
MAX_DOCX_UNCOMPRESSED = 512 * 1024 * 1024


def parse_docx(stream: BinaryIO) -> ParsedDocument:
    _check_archive(stream)
    stream.seek(0)
    try:
        return _parse(stream)
    except ParseError:
        raise
    except Exception as exc:
        raise ParseError(f"the DOCX file is corrupt or unreadable: {reason(exc)}") from exc


def _check_archive(stream: BinaryIO) -> None:
    try:
        with zipfile.ZipFile(stream) as archive:
            infos = archive.infolist()
    except zipfile.BadZipFile:
        raise ParseError("the DOCX file is corrupt or unreadable: it is not a ZIP archive") from None
    except Exception as exc:  # zipfile raises assorted errors for mangled central directories
        raise ParseError(f"the DOCX file is corrupt or unreadable: {reason(exc)}") from exc
    if not any(info.filename == "[Content_Types].xml" for info in infos):
        raise ParseError("the DOCX file is corrupt or unreadable: a ZIP archive but not a Word document")
    if sum(info.file_size for info in infos) > MAX_DOCX_UNCOMPRESSED:
        raise ParseError("the DOCX file is too large once decompressed (a zip bomb?)")


def _parse(stream: BinaryIO) -> ParsedDocument:
    document = docx.Document(stream)
    sections: list[Section] = []
    heading: str | None = None
    blocks: list[str] = []
    first_title: str | None = None
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            blocks.append(_table_text(block))
            continue
        text = block.text
        kind = _heading_kind(block)
        if kind is None or not text.strip():
            blocks.append(text)
            continue
        if kind == "Title" and first_title is None:
            first_title = text
        sections.append(Section(text="\n\n".join(blocks), heading=heading))
        heading, blocks = text, [text]
    sections.append(Section(text="\n\n".join(blocks), heading=heading))
    title = document.core_properties.title
    return finish("docx", title if title and title.strip() else first_title, sections)


def _heading_kind(paragraph: Paragraph) -> str | None:
    """'Heading' or 'Title' for paragraphs in those styles (by name, or by built-in style id when the
    style names are localised), else None."""
    style = paragraph.style
    if style is None:
        return None
    for name in (style.name or "", style.style_id or ""):
        if name.startswith("Title"):
            return "Title"
        if name.startswith("Heading"):
            return "Heading"
    return None


def _table_text(table: Table) -> str:
    rows: list[str] = []
    for row in table.rows:
        cells: list[str] = []
        previous = None
        for cell in row.cells:
            if previous is not None and cell._tc is previous:  # horizontally merged: same cell again
                continue
            previous = cell._tc
            parts: list[str] = []
            for inner in cell.iter_inner_content():
                parts.append(_table_text(inner) if isinstance(inner, Table) else inner.text)
            text = " ".join(" ".join(parts).split())
            if text:
                cells.append(text)
        if cells:
            rows.append(" | ".join(cells))
    return "\n".join(rows)
