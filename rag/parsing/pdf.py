"""PDF via pypdf: one section per page, with the page number."""

from __future__ import annotations

import logging
from typing import BinaryIO

from pypdf import PasswordType, PdfReader

from rag.parsing.base import ParsedDocument, ParseError, Section, finish, reason

__all__ = ["MAX_PDF_PAGES", "parse_pdf"]

MAX_PDF_PAGES = 5000
log = logging.getLogger(__name__)


def parse_pdf(stream: BinaryIO) -> ParsedDocument:
    try:
        reader = PdfReader(stream, strict=False)
        encrypted = reader.is_encrypted
    except Exception as exc:
        raise ParseError(f"the PDF is corrupt or unreadable: {reason(exc)}") from exc
    if encrypted:
        _decrypt(reader)
    try:
        pages = len(reader.pages)
    except Exception as exc:
        raise ParseError(f"the PDF is corrupt or unreadable: {reason(exc)}") from exc
    if pages > MAX_PDF_PAGES:
        raise ParseError(f"the PDF has {pages:,} pages; at most {MAX_PDF_PAGES:,} are supported")
    sections: list[Section] = []
    failures: list[str] = []
    for number in range(1, pages + 1):
        try:
            text = reader.pages[number - 1].extract_text()
        except Exception as exc:
            # One damaged page should not cost the rest of the document.
            failures.append(f"page {number}: {reason(exc)}")
            continue
        sections.append(Section(text=text, page=number))
    if failures:
        log.warning("pdf: %d of %d pages unreadable: %s", len(failures), pages, "; ".join(failures[:5]))
    if not any(section.text.strip() for section in sections):
        if failures and len(failures) == pages:
            raise ParseError(f"the PDF is corrupt or unreadable: {failures[0]}")
        raise ParseError(
            "the PDF has no extractable text: it has no text layer (is it a scanned image?); "
            "run OCR on it and upload it again"
        )
    return finish("pdf", _title(reader), sections)


def _decrypt(reader: PdfReader) -> None:
    """Many PDFs are 'encrypted' only to carry permission flags, with an empty user password."""
    try:
        result = reader.decrypt("")
    except Exception as exc:
        raise ParseError(f"the PDF is encrypted and cannot be decrypted: {reason(exc)}") from exc
    if result == PasswordType.NOT_DECRYPTED:
        raise ParseError("the PDF is encrypted (password-protected); remove the password and upload it again")


def _title(reader: PdfReader) -> str | None:
    try:
        metadata = reader.metadata
        title = metadata.title if metadata is not None else None
    except Exception:  # a broken Info dictionary is no reason to reject readable pages
        return None
    return title if isinstance(title, str) and title.strip() else None
