"""DOCX via python-docx: paragraphs and tables in document order, split at Heading/Title styles.

python-docx never sees the uploaded archive itself: its parts are first inflated under the caps
of `rag.parsing.archive` (a zip bomb stops there with a ParseError) and handed to python-docx as
an uncompressed in-memory package, so nothing it reads can inflate further.
"""

from __future__ import annotations

import io
import zipfile
from typing import BinaryIO

import docx
from docx.table import Table
from docx.text.paragraph import Paragraph

from rag.parsing.archive import ArchiveTooLarge, open_archive, read_parts
from rag.parsing.base import ParsedDocument, ParseError, Section, finish, reason

__all__ = ["parse_docx"]


def parse_docx(stream: BinaryIO) -> ParsedDocument:
    package = _inflated_package(stream)
    try:
        return _parse(package)
    except ParseError:
        raise
    except Exception as exc:
        raise ParseError(f"the DOCX file is corrupt or unreadable: {reason(exc)}") from exc


def _inflated_package(stream: BinaryIO) -> io.BytesIO:
    """The package's parts, inflated under the caps, as an uncompressed (stored) ZIP in memory."""
    try:
        with open_archive(stream) as archive:
            if not any(info.filename == "[Content_Types].xml" for info in archive.infolist()):
                raise ParseError("the DOCX file is corrupt or unreadable: a ZIP archive but not a Word document")
            parts = read_parts(archive)
    except ArchiveTooLarge as exc:
        raise ParseError(f"the DOCX file is refused: {exc}") from None
    except ParseError:
        raise
    except zipfile.BadZipFile as exc:
        raise ParseError(f"the DOCX file is corrupt or unreadable: {reason(exc)}") from None
    except Exception as exc:  # zipfile raises assorted errors for mangled archives
        raise ParseError(f"the DOCX file is corrupt or unreadable: {reason(exc)}") from exc
    package = io.BytesIO()
    with zipfile.ZipFile(package, "w", compression=zipfile.ZIP_STORED) as stored:
        for name, data in parts.items():
            stored.writestr(name, data)
    del parts
    package.seek(0)
    return package


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
