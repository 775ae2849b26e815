"""Parsing functions that behave like hostile documents, for ParsePool(parse=...) in tests.

They run in the pool's worker processes (so they are module-level, imported there by name), and
record their pid next to the document (`pid_file`) so that a test can check the process is gone.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from rag.parsing import ParsedDocument, parse_file


def alive(pid: int) -> bool:
    """Whether a process (a pool worker the test watched) still exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def pid_file(path: Path) -> Path:
    return path.with_name(path.name + ".pid")


def _record_pid(path: Path) -> None:
    pid_file(path).write_text(str(os.getpid()))


def catastrophic_regex(path: Path, fmt: str) -> ParsedDocument:
    """Exponential backtracking inside the C regex engine: signal handlers cannot run."""
    _record_pid(path)
    re.match(r"(a*)*b", "a" * 64)
    raise AssertionError("unreachable within any test's lifetime")


def memory_hog(path: Path, fmt: str) -> ParsedDocument:
    """Allocates until the process's memory limit stops it."""
    _record_pid(path)
    hoard = []
    while True:
        hoard.append(bytearray(64 * 1024 * 1024))


def recording(path: Path, fmt: str) -> ParsedDocument:
    """The real parser, after recording its pid."""
    _record_pid(path)
    return parse_file(path, fmt)


def stuck_check(filename: str, content_type: str | None, head: bytes, path: Path, size: int) -> str:
    """An upload check (rag.upload_check) that never ends, like pypdf on a hostile PDF could."""
    _record_pid(path)
    re.match(r"(a*)*b", "a" * 64)
    raise AssertionError("unreachable within any test's lifetime")
