"""Cancel a handler's work when its client hangs up before the response starts.

Litestar watches for `http.disconnect` only while it sends a streamed body. A handler that
computes one JSON answer for seconds (a non-streaming chat) would otherwise run to its end for
nobody. Once the request body has been read, the next ASGI `receive()` returns only when the
client is gone (`http.disconnect`; Granian, Uvicorn and httpx's ASGI transport all do this),
so racing the work against it costs one pending call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from litestar.types import Receive

from core.errors import QuarryError

__all__ = ["ClientDisconnected", "unless_disconnected"]

T = TypeVar("T")


class ClientDisconnected(QuarryError):
    """The client hung up before its answer was ready (nobody reads the response)."""

    # nginx's "client closed request": what the metrics and the access log show
    status, title, type_slug = 499, "Client closed request", "client-closed-request"


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass  # the rest of a body nobody read


async def _reap(task: asyncio.Future[Any]) -> None:
    """Wait for a cancelled task to end (its outcome stays on the task); a cancellation of the
    caller itself still propagates."""
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:  # noqa: S110 - the task keeps its exception; whoever needs it asks the task
        pass


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """The result of `work`, or ClientDisconnected once the client hangs up; `work` is then
    cancelled and has ended (its own cleanup included) before this raises.
    Only for a request whose body has been read: the watcher takes the next `receive()`."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when the handler itself is cancelled
        watcher.cancel()
        if not task.done():
            task.cancel()
            await _reap(task)
        await _reap(watcher)
    if task.cancelled():
        raise ClientDisconnected("the client disconnected before the answer was ready")
    return task.result()
