"""Cheap checks of an upload before it is queued, so obviously bad files get a 422 at once.

Only structure is checked here (a few milliseconds: no text extraction): the API must not
do ingestion work. Whatever passes and still cannot be parsed fails in the ingestion job,
and the document shows `failed` with the reason.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from core.errors import Unprocessable

__all__ = ["check_upload"]


def check_upload(path: Path, fmt: str, size: int) -> None:
    """Raise Unprocessable (422) saying why the file cannot be ingested."""
    if size == 0:
        raise Unprocessable("the file is empty")
    if fmt == "pdf":
        _check_pdf(path)
    elif fmt == "docx":
        _check_docx(path)


def _check_pdf(path: Path) -> None:
    from pypdf import PdfReader, apply_configuration
    from pypdf.errors import PdfReadError

    from rag.parsing.pdf import PDF_LIMITS

    try:
        with apply_configuration(**PDF_LIMITS):
            reader = PdfReader(path, strict=False)
            if reader.is_encrypted and not reader.decrypt(""):
                raise Unprocessable("the PDF is encrypted; upload a copy without a password")
            if len(reader.pages) == 0:
                raise Unprocessable("the PDF has no pages")
    except Unprocessable:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError, AttributeError) as exc:
        raise Unprocessable(f"the PDF is corrupt or unreadable: {exc}") from None
    except Exception as exc:  # pypdf raises a wide range of errors on hostile input
        raise Unprocessable(f"the PDF is corrupt or unreadable: {type(exc).__name__}") from None


def _check_docx(path: Path) -> None:
    """The ZIP directory only (nothing is inflated here): the parser enforces the same caps again
    while it inflates, since a directory can lie about sizes."""
    from rag.parsing.archive import ArchiveTooLarge, check_directory, open_archive

    try:
        with open_archive(path) as archive:
            infos = archive.infolist()
    except ArchiveTooLarge as exc:
        raise Unprocessable(f"the .docx file is refused: {exc}") from None
    except zipfile.BadZipFile:
        raise Unprocessable("the .docx file is corrupt (not a valid zip archive)") from None
    except (ValueError, OSError, EOFError, NotImplementedError) as exc:  # mangled central directories
        raise Unprocessable(f"the .docx file is corrupt: {type(exc).__name__}") from None
    try:
        check_directory(infos)
    except ArchiveTooLarge as exc:
        raise Unprocessable(f"the .docx file is refused: {exc}") from None
    if not any(info.filename == "word/document.xml" for info in infos):
        raise Unprocessable("the .docx file has no document body (word/document.xml)")
