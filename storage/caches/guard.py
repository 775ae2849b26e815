"""Calls to Redis that fail fast and never raise anything but `RedisUnavailable`.

Each call has a short deadline; after a failure the guard "opens" for a moment and fails
further calls at once instead of paying a connect timeout on every request, then lets the
next call through to probe (half-open). Caches treat `RedisUnavailable` as a miss; the rate
limiter applies its fail-open / fail-closed setting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

__all__ = ["RedisGuard", "RedisUnavailable"]

T = TypeVar("T")
_log = logging.getLogger("quarry.redis")


class RedisUnavailable(Exception):
    """Redis did not answer in time (or at all); the caller degrades."""


class RedisGuard:
    def __init__(self, redis: Redis, *, timeout_s: float = 0.25, open_for_s: float = 1.0) -> None:
        self.redis = redis
        self.timeout_s = timeout_s
        self.open_for_s = open_for_s
        self._open_until = 0.0
        self._failing = False

    @property
    def available(self) -> bool:
        """False while the breaker is open (a recent call failed)."""
        return time.monotonic() >= self._open_until

    async def call(self, fn: Callable[[Redis], Awaitable[T]]) -> T:
        if not self.available:
            raise RedisUnavailable("redis is unavailable (recent failure)")
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await fn(self.redis)
        except (RedisError, OSError, TimeoutError) as exc:
            self._open_until = time.monotonic() + self.open_for_s
            if not self._failing:
                _log.warning("redis unavailable, serving without it: %s", type(exc).__name__)
            self._failing = True
            raise RedisUnavailable(str(type(exc).__name__)) from exc
        if self._failing:
            _log.info("redis is back")
            self._failing = False
        return result
