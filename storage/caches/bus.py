"""Cache invalidation across processes over Redis pub/sub.

Messages are ``<kind>:<id>`` on one channel; each process runs one listener task that calls
the handlers registered for the kind. When the subscription breaks (Redis down) the listener
reconnects with backoff and, once back, calls every `on_reconnect` hook: messages published
meanwhile were lost, so local tiers are cleared rather than trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from storage.caches.guard import RedisGuard, RedisUnavailable

__all__ = ["CHANNEL", "InvalidationBus"]

CHANNEL = "quarry:invalidate"
_log = logging.getLogger("quarry.cache")


class InvalidationBus:
    def __init__(self, redis: Redis, guard: RedisGuard) -> None:
        self.redis = redis
        self.guard = guard
        self._handlers: dict[str, list[Callable[[str], None]]] = {}
        self._reconnect_hooks: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    def on(self, kind: str, handler: Callable[[str], None]) -> None:
        self._handlers.setdefault(kind, []).append(handler)

    def on_reconnect(self, hook: Callable[[], None]) -> None:
        self._reconnect_hooks.append(hook)

    async def publish(self, kind: str, ident: str) -> bool:
        """Deliver locally at once, then to the other processes; False if Redis is down."""
        self._dispatch(f"{kind}:{ident}")
        try:
            await self.guard.call(lambda r: r.publish(CHANNEL, f"{kind}:{ident}"))
        except RedisUnavailable:
            return False
        return True

    def _dispatch(self, message: str) -> None:
        kind, _, ident = message.partition(":")
        for handler in self._handlers.get(kind, []):
            handler(ident)

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="cache-invalidation")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        delay, lost = 0.2, False
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                if lost:
                    for hook in self._reconnect_hooks:
                        hook()
                    _log.info("cache invalidation channel is back; local caches cleared")
                lost, delay = False, 0.2
                self.subscribed.set()
                async for message in pubsub.listen():
                    data = message.get("data")
                    if isinstance(data, bytes):
                        self._dispatch(data.decode())
            except (RedisError, OSError) as exc:
                if not lost:
                    _log.warning("cache invalidation channel lost: %s", type(exc).__name__)
                lost = True
                self.subscribed.clear()
            except Exception:  # a bug must not end invalidation for the life of the process
                _log.exception("cache invalidation listener failed; restarting it")
                lost = True
                self.subscribed.clear()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
