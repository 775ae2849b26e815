"""Glob patterns on '/'-separated relative paths: `*` and `?` stay within one segment,
`**` spans segments (`**/*.md` matches `a.md` and `x/y/a.md`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

__all__ = ["compile_glob", "matches"]


@lru_cache(maxsize=256)
def compile_glob(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def matches(path: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    if include and not any(compile_glob(p).match(path) for p in include):
        return False
    return not any(compile_glob(p).match(path) for p in exclude)
