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
    """One per process, used from its event loop. Invalidation may arrive from another thread
    (a test client runs the app's lifespan tasks in a portal thread), so every step tolerates
    an entry vanishing under it; no operation awaits, so the loop itself never interleaves."""

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
            self._data.pop(key, None)
            return MISSING
        try:
            self._data.move_to_end(key)
        except KeyError:  # dropped meanwhile by an invalidation
            return MISSING
        return value

    def set(self, key: K, value: V, ttl_s: float | None = None) -> None:
        ttl = self.ttl_s if ttl_s is None else min(ttl_s, self.ttl_s)
        if ttl <= 0 or self.maxsize <= 0:
            return
        self._data[key] = (time.monotonic() + ttl, value)
        try:
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
        except KeyError:
            pass

    def pop(self, key: K) -> None:
        self._data.pop(key, None)

    def drop_where(self, predicate: Callable[[V], bool]) -> int:
        doomed = [k for k, (_, v) in list(self._data.items()) if predicate(v)]
        for k in doomed:
            self._data.pop(k, None)
        return len(doomed)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
