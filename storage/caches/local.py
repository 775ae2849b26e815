"""A small in-process LRU cache whose entries expire (per-entry TTL)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["MISSING", "LocalTTLCache"]

K = TypeVar("K")
V = TypeVar("V")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()


class LocalTTLCache(Generic[K, V]):
    """Not thread-safe: one per event loop (each API worker process has its own)."""

    def __init__(self, maxsize: int, ttl_s: float) -> None:
        self.maxsize = maxsize
        self.ttl_s = ttl_s
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | _Missing:
        entry = self._data.get(key)
        if entry is None:
            return MISSING
        expires, value = entry
        if time.monotonic() >= expires:
            del self._data[key]
            return MISSING
        self._data.move_to_end(key)
        return value

    def set(self, key: K, value: V, ttl_s: float | None = None) -> None:
        ttl = self.ttl_s if ttl_s is None else min(ttl_s, self.ttl_s)
        if ttl <= 0 or self.maxsize <= 0:
            return
        self._data[key] = (time.monotonic() + ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def pop(self, key: K) -> None:
        self._data.pop(key, None)

    def drop_where(self, predicate: Callable[[V], bool]) -> int:
        doomed = [k for k, (_, v) in self._data.items() if predicate(v)]
        for k in doomed:
            del self._data[k]
        return len(doomed)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
