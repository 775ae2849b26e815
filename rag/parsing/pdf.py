"""PDF via pypdf: one section per page, with the page number.

Limits hold while extracting, not after: the page count is checked before any page is read,
and the text is counted page by page, so a PDF with more than MAX_TEXT_CHARS of text stops at
the page that crosses it. pypdf (>= 7.1.1: the first release with every known RAM-exhaustion and
endless-loop fix, see pyproject.toml) bounds each stream's decoding itself; `PDF_LIMITS` also
keeps it from ever running the external jbig2dec binary on a document's images.
"""

from __future__ import annotations

import logging
from typing import BinaryIO

from pypdf import PasswordType, PdfReader, apply_configuration

from rag.parsing.base import MAX_TEXT_CHARS, ParsedDocument, ParseError, Section, finish, reason

__all__ = ["MAX_PDF_PAGES", "PDF_LIMITS", "parse_pdf"]

MAX_PDF_PAGES = 5000
PDF_LIMITS = {"jbig2dec_binary": None}
"""pypdf configuration overrides for untrusted PDFs (its own stream limits stay as they are)."""
log = logging.getLogger(__name__)


def parse_pdf(stream: BinaryIO) -> ParsedDocument:
    with apply_configuration(**PDF_LIMITS):
        return _parse_pdf(stream)


def _parse_pdf(stream: BinaryIO) -> ParsedDocument:
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
    chars = 0
    for number in range(1, pages + 1):
        try:
            text = reader.pages[number - 1].extract_text()
        except Exception as exc:
            # One damaged page should not cost the rest of the document.
            failures.append(f"page {number}: {reason(exc)}")
            continue
        chars += len(text)
        if chars > MAX_TEXT_CHARS:
            raise ParseError(f"the document has more than {MAX_TEXT_CHARS:,} characters of text "
                             f"(reached on page {number:,} of {pages:,})")
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
