"""The worker's shutdown, as soon as it starts: open streams end with a final event.

Granian stops a worker with SIGTERM (SIGINT on Ctrl-C): the worker stops accepting, waits up to
`--workers-kill-timeout` for its open requests, and only then runs the ASGI lifespan shutdown
(emmett-framework/granian#547). Too late for a stream that would stay open until the kill:
so `shutdown_lifespan` chains a handler onto the worker's signal handlers (the Python-level
handler; the loop's own handler, Granian's, still runs) that sets `Shutdown` at the first
signal. Streams subscribe to it (`on_begin`) and end with a final event at once, so clients can
retry on another worker; plain requests finish as before. The lifespan's end sets it too (any
server, and the test clients).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

__all__ = ["SHUTTING_DOWN", "Shutdown", "shutdown_lifespan", "shutdown_of"]

log = logging.getLogger("quarry.shutdown")

SHUTTING_DOWN = "shutting_down"
"""The `code` of the final event of a stream cut short by the shutdown."""
SHUTTING_DOWN_MESSAGE = "the server is shutting down; retry the request (another instance will answer it)"
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Shutdown:
    """Set once, when the worker begins shutting down. Callbacks run on the event loop."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self._callbacks: set[Callable[[], None]] = set()

    @property
    def started(self) -> bool:
        return self.event.is_set()

    def begin(self) -> None:
        if self.event.is_set():
            return
        log.info("shutting down: open streams end with a final event")
        self.event.set()
        callbacks, self._callbacks = self._callbacks, set()
        for callback in callbacks:
            callback()

    def on_begin(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` when the shutdown begins (at once if it has); returns the unsubscribe."""
        if self.event.is_set():
            callback()
            return _nothing
        self._callbacks.add(callback)
        return lambda: self._callbacks.discard(callback)


def _nothing() -> None:
    return None


def shutdown_of(state: Any) -> Shutdown | None:
    """The app's Shutdown (None for an app built without `shutdown_lifespan`)."""
    return getattr(state, "shutdown", None)


def _chain_signals(shutdown: Shutdown) -> Callable[[], None]:
    """Begin `shutdown` on SIGTERM/SIGINT, then run the handler that was there (Granian's wake-up of
    the loop, or Python's default). Returns the restore. Python runs signal handlers in the main
    thread between bytecodes: the handler only schedules `begin` on the loop."""
    if threading.current_thread() is not threading.main_thread():
        return _nothing  # e.g. a test client running the app in a thread: no signals to chain
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {sig: signal.getsignal(sig) for sig in _SIGNALS}

    def handler(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to end
            loop.call_soon_threadsafe(shutdown.begin)
        before = previous.get(signum)
        if callable(before):
            before(signum, frame)
        elif before == signal.SIG_DFL and signum == signal.SIGINT:
            signal.default_int_handler(signum, frame)
        elif before == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)  # what would have happened: the default action
            signal.raise_signal(signum)

    installed = []
    for sig in _SIGNALS:
        try:
            signal.signal(sig, handler)
            installed.append(sig)
        except (ValueError, OSError):  # pragma: no cover - not the main interpreter
            log.warning("could not watch signal %s for a graceful shutdown", sig)

    def restore() -> None:
        for sig in installed:
            if signal.getsignal(sig) is handler:  # unless someone replaced it since
                signal.signal(sig, previous[sig])

    return restore


@asynccontextmanager
async def shutdown_lifespan(app: Any) -> AsyncIterator[None]:
    """`app.state.shutdown`, set by the first SIGTERM/SIGINT or at the end of the lifespan."""
    shutdown = Shutdown()
    app.state.shutdown = shutdown
    restore = _chain_signals(shutdown)
    try:
        yield
    finally:
        shutdown.begin()
        restore()
