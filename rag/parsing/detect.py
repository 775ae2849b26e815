"""Which of FORMATS an upload is: by file extension, then declared content type, then content."""

from __future__ import annotations

import codecs
import re
from pathlib import PurePosixPath, PureWindowsPath

from rag.parsing.base import FORMATS, UnsupportedFormat

__all__ = ["detect_format"]

_EXTENSIONS = {
    ".txt": "txt", ".text": "txt",
    ".md": "md", ".markdown": "md",
    ".html": "html", ".htm": "html",
    ".pdf": "pdf",
    ".docx": "docx",
}
_CONTENT_TYPES = {
    "text/plain": "txt",
    "text/markdown": "md", "text/x-markdown": "md",
    "text/html": "html", "application/xhtml+xml": "html",
    "application/pdf": "pdf", "application/x-pdf": "pdf",
    FORMATS["docx"]: "docx",
}
# Formats people try that we recognise only to say precisely what to do instead.
_KNOWN_UNSUPPORTED = {
    ".doc": "legacy Word .doc files are not supported; save the document as .docx",
    "application/msword": "legacy Word .doc files are not supported; save the document as .docx",
}
_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # legacy Office (.doc, .xls, .ppt)
# ASCII whitespace, as `\s` in a bytes pattern; a single quantifier: one pass, no backtracking.
_SPACE_RUN = re.compile(rb"[ \t\n\r\f\v]*")
_TAG_END = (b" ", b"\t", b"\n", b"\r", b"\f", b"\v", b">")


def detect_format(filename: str | None, content_type: str | None, head: bytes) -> str:
    """The format key of FORMATS for an upload, or UnsupportedFormat saying what was received.

    `head` is the first few KB of the content: enough for PDF and HTML signatures and to tell text
    from binary. A .docx cannot be proven from its first bytes (a ZIP's first entry is usually
    [Content_Types].xml), so a bare ZIP is .docx only when word/ shows up in the head.
    """
    ext = _extension(filename)
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if mime in _CONTENT_TYPES:
        return _CONTENT_TYPES[mime]
    sniffed = _sniff(head)
    if sniffed is not None:
        return sniffed
    received = ", ".join(
        part for part in (
            f"file name {filename!r}" if filename else "",
            f"content type {content_type!r}" if content_type else "",
        ) if part
    ) or "no file name or content type"
    reason = _KNOWN_UNSUPPORTED.get(ext) or _KNOWN_UNSUPPORTED.get(mime)
    if reason is None and head.startswith(_OLE2):
        reason = _KNOWN_UNSUPPORTED[".doc"]
    reason = reason or "the content is not recognisable as any of them"
    raise UnsupportedFormat(
        f"unsupported document format ({received}): {reason}; supported formats are "
        + ", ".join(f"{fmt} ({mime_type})" for fmt, mime_type in FORMATS.items())
    )


def _extension(filename: str | None) -> str:
    if not filename:
        return ""
    # Browsers and clients send bare names, but some send a full client-side path (either flavour).
    name = PureWindowsPath(PurePosixPath(filename).name).name
    return PurePosixPath(name).suffix.lower()


def _sniff(head: bytes) -> str | None:
    if b"%PDF-" in head[:1024]:  # the spec allows junk before the header within the first 1 KB
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        return "docx" if b"word/" in head else None
    if head.startswith(_OLE2) or not head:
        return None
    text = _as_text(head)
    if text is None:
        return None
    if _starts_like_html(text.lstrip("\ufeff").encode()):
        return "html"
    return "txt"


def _starts_like_html(data: bytes) -> bool:
    r"""Whitespace and comments, then <!doctype html>, <html>, <head> or <body> (ASCII case-insensitive).

    A scan with str.find, linear in the head: the regex it replaces,
    `\s*(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head|body)[\s>]`, backtracked exponentially
    over a run of `<!---->`. It accepts exactly what that regex accepted: a comment may close at any
    later `-->` (the lazy `.*?` gives up earlier ones), so every `-->` after the first `<!--` is a
    candidate end, and the comments chained after it close at `-->`s that are candidates already.
    """
    data = data.lower()
    start = _skip_spaces(data, 0)
    if _html_tag_at(data, start):
        return True
    if not data.startswith(b"<!--", start):
        return False
    end = data.find(b"-->", start + 4)
    while end != -1:
        if _html_tag_at(data, _skip_spaces(data, end + 3)):
            return True
        end = data.find(b"-->", end + 1)
    return False


def _skip_spaces(data: bytes, pos: int) -> int:
    match = _SPACE_RUN.match(data, pos)
    return match.end() if match else pos


def _html_tag_at(data: bytes, pos: int) -> bool:
    if not data.startswith(b"<", pos):
        return False
    pos += 1
    names: tuple[bytes, ...] = (b"html", b"head", b"body")
    if data.startswith(b"!doctype", pos):
        after = _skip_spaces(data, pos + 8)
        if after == pos + 8:
            return False
        pos, names = after, (b"html",)
    return any(data.startswith(name, pos) for name in names) and data[pos + 4:pos + 5] in _TAG_END


def _as_text(head: bytes) -> str | None:
    """The head decoded as UTF-8/16 text, or None when it looks binary."""
    encoding = "utf-8"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    try:
        # incremental: the head may end in the middle of a multi-byte character
        text = codecs.getincrementaldecoder(encoding)().decode(head, final=False)
    except UnicodeDecodeError:
        return None
    controls = sum(1 for ch in text if ord(ch) < 32 and ch not in "\t\n\r\f")
    return text if controls <= len(text) // 100 else None
