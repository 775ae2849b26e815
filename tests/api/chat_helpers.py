"""Helpers for the chat tests: the app on the test's own event loop (so an in-process simulated
LLM and the app share it), SSE parsing, a raw ASGI driver that can hang up mid-stream, and a
small corpus."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
from litestar import Litestar

from api.app import create_app
from core.settings import Settings
from tests.ingest_helpers import new_collection, upload_text

CORPUS = {
    "Penguins": ("Penguins live in the Southern Hemisphere, mostly along the coasts of Antarctica. "
                 "Penguins eat krill, squid and small fish that they catch underwater. "
                 "Emperor penguins huddle together in large groups to survive the winter cold."),
    "Glaciers": ("Glaciers carve U-shaped valleys as they slowly advance downhill. "
                 "Moraines are ridges of rock debris left behind by a retreating glacier."),
    "Sourdough": ("Sourdough bread needs a starter fed with flour and water every day. "
                  "Let the dough proof overnight in a cool kitchen before baking it at 250 degrees."),
    "Lighthouse": ("The lighthouse keeper records every passing ship in a leather journal. "
                   "The lamp of the lighthouse is visible from 30 kilometres away on a clear night."),
}


@dataclass
class ChatApp:
    app: Litestar
    http: httpx.AsyncClient

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.post(path, **kwargs)

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.get(path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.delete(path, **kwargs)


@asynccontextmanager
async def chat_app(settings: Settings) -> AsyncIterator[ChatApp]:
    """create_app(settings) with its lifespan on the current loop, and an httpx client over ASGI.

    The lifespan is held by a task of its own: Litestar's lifespan opens an anyio task group,
    which must be left by the task that entered it (a module-scoped fixture's setup and
    teardown run in different tasks)."""
    app = create_app(settings)
    ready, stop = asyncio.Event(), asyncio.Event()

    async def hold_lifespan() -> None:
        async with app.lifespan():
            ready.set()
            await stop.wait()

    holder = asyncio.create_task(hold_lifespan())
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({holder, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if holder.done():
        waiter.cancel()
        holder.result()  # start-up failed: raise its error
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://quarry.test", timeout=30) as http:
            yield ChatApp(app, http)
    finally:
        stop.set()
        await holder


async def load_corpus(client: Any, headers: dict[str, str], run_jobs: Callable[[], Any], name: str = "docs",
                      corpus: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """A collection with one document per corpus entry; returns (collection id, {title: document id})."""
    cid = await new_collection(client, headers, name)
    ids = {}
    for title, text in (corpus or CORPUS).items():
        accepted = await upload_text(client, headers, cid, text, title=title)
        ids[title] = str(accepted["document_id"])
    await run_jobs()
    return cid, ids


@dataclass
class Event:
    event: str
    data: Any
    id: str | None = None


def parse_sse(text: str) -> list[Event]:
    """Server-sent events of a whole body; `data` parsed as JSON when it is JSON."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data, ident = "message", [], None
        for line in block.split("\n"):
            if line.startswith(":") or not line:
                continue
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)
            elif key == "id":
                ident = value
        if data:
            raw = "\n".join(data)
            try:
                parsed: Any = json.loads(raw)
            except ValueError:
                parsed = raw
            events.append(Event(name, parsed, ident))
    return events


@dataclass
class RawExchange:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    disconnected_at: float | None = None


async def drive_asgi(app: Litestar, method: str, path: str, headers: dict[str, str], body: Any,
                     hang_up_when: Callable[[bytes], bool] = lambda body: False, within_s: float = 20.0,
                     hang_up: asyncio.Event | None = None) -> RawExchange:
    """Call the ASGI app like a server would, and send `http.disconnect` (the client hangs up) as
    soon as `hang_up_when(body so far)` is true, or when the test sets `hang_up`."""
    payload = msgspec.json.encode(body)
    exchange = RawExchange()
    hang_up = hang_up or asyncio.Event()
    sent_request = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await hang_up.wait()
        exchange.disconnected_at = asyncio.get_running_loop().time()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            exchange.status = message["status"]
            exchange.headers = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            exchange.body += message.get("body", b"")
            if hang_up_when(bytes(exchange.body)):
                hang_up.set()

    raw_headers = [(b"host", b"quarry.test"), (b"content-type", b"application/json"),
                   (b"content-length", str(len(payload)).encode()),
                   *((k.lower().encode(), v.encode()) for k, v in headers.items())]
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": raw_headers, "client": ("127.0.0.1", 50000), "server": ("quarry.test", 80),
             "state": {}}
    async with asyncio.timeout(within_s):
        await app(scope, receive, send)  # type: ignore[arg-type]
    return exchange
