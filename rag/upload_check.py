"""The upload checks the API makes before queuing a file (format detection and the structure check
of rag.validation: pypdf opens a PDF), in a small pool of killable processes (rag.isolation).

Both read hostile bytes: in the API's event loop (or one of its threads, which hold the GIL) a
slow file would freeze every request of that API worker. Here a check is bounded in time
(`CHECK_TIMEOUT_S`), memory, and in how long it waits for a free checker (`CHECK_WAIT_S`); a
killed check is the file's fault (422), a pool that stays busy is a 503. The pool is created on
first use in each API process, and stops with it (pebble's exit hook).
"""

from __future__ import annotations

from pathlib import Path

from core.errors import Unavailable, Unprocessable
from rag.isolation import IsolatedPool, IsolationBusy, IsolationError, IsolationTimeout
from rag.parsing import detect_format
from rag.validation import check_upload

__all__ = ["CHECK_TIMEOUT_S", "check_file"]

# A structure check takes milliseconds on an honest file; seconds mean a hostile one.
CHECK_TIMEOUT_S = 10.0
CHECK_WAIT_S = 10.0
_CHECK_MEMORY_MB = 1024
# Checks are short; two let an honest upload pass while a hostile one is being killed.
_CHECK_WORKERS = 2

_pool: IsolatedPool | None = None


def _detect_and_check(filename: str, content_type: str | None, head: bytes, path: Path, size: int) -> str:
    fmt = detect_format(filename, content_type, head)
    check_upload(path, fmt, size)
    return fmt


def _checkers() -> IsolatedPool:
    global _pool
    if _pool is None:
        _pool = IsolatedPool(what="checking the file", workers=_CHECK_WORKERS, timeout_s=CHECK_TIMEOUT_S,
                             max_memory_mb=_CHECK_MEMORY_MB, max_wait_s=CHECK_WAIT_S)
    return _pool


async def check_file(filename: str, content_type: str | None, head: bytes, path: Path, size: int) -> str:
    """The file's format (a key of FORMATS) when it can be queued; else the parsers' 415/422,
    or 422 when the check itself was stopped."""
    try:
        return await _checkers().run(_detect_and_check, filename, content_type, head, path, size)
    except IsolationBusy:
        raise Unavailable("every upload checker of this server is busy; try again in a few seconds") from None
    except IsolationTimeout:
        raise Unprocessable(f"the file could not be checked within {CHECK_TIMEOUT_S:g} s") from None
    except IsolationError as exc:
        raise Unprocessable(f"the file could not be checked: {exc.detail}") from None
