"""Keep the garbage collector's full passes off the request path of a long-running server.

A worker holds ~130k container objects once the app is built (Litestar's routes and models,
OpenTelemetry, msgspec types, ...) and they live as long as the process. CPython's full (gen 2)
collection walks every one of them each time it runs; under 200 concurrent chat streams on
this 2-core machine it ran every few seconds and stopped the worker's event loop for 65-90 ms,
collecting nothing (measured with gc.callbacks; docs/chat.md). `gc.freeze()` moves every object
alive at the end of startup to the permanent generation, which collections skip: they then walk
only what the process created since. Objects frozen this way that later become garbage are
freed by reference counting as usual; only a cycle among them would stay until exit, and a
server's startup objects do not die.
"""

from __future__ import annotations

import gc

__all__ = ["freeze_startup_objects"]


def freeze_startup_objects() -> int:
    """Collect what startup left behind, then exempt everything alive from later collections.
    Call once the process is ready to serve. Returns how many objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
