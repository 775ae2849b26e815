"""The streaming floor for perf/chat_bench.py: a bare ASGI app under the same Granian options
that answers `POST /v1/chat` like the platform's SSE (a `step` event, `token` events with the
question's nonce, `done` with the answer) from a timer - no auth, no Redis, no LLM call.

    QUARRY_FLOOR_TTFT_MS=300 QUARRY_FLOOR_TOKENS_PER_S=50 QUARRY_FLOOR_TOKENS=20 \
    granian --interface asgi --workers 2 --loop uvloop perf.sse_floor:app

What chat_bench measures against it is what any Python ASGI app streaming that many events
through Granian costs on this machine, next to the load generator: the part of the platform's
TTFT overhead no change to the platform can remove here.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

TTFT_S = float(os.environ.get("QUARRY_FLOOR_TTFT_MS", "300")) / 1000
TOKEN_GAP_S = 1 / float(os.environ.get("QUARRY_FLOOR_TOKENS_PER_S", "50"))
TOKENS = int(os.environ.get("QUARRY_FLOOR_TOKENS", "20"))
_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http":
        return
    if scope["path"] == "/readyz":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    nonce = json.loads(body)["message"].split()[0]
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": b'event: step\ndata: {"step":1}\n\n', "more_body": True})
    await asyncio.sleep(TTFT_S)
    for i in range(TOKENS):
        if i:
            await asyncio.sleep(TOKEN_GAP_S)
        event = b"event: token\ndata: " + json.dumps({"text": f"{nonce}:{i} ", "step": 1}).encode() + b"\n\n"
        await send({"type": "http.response.body", "body": event, "more_body": True})
    done = json.dumps({"answer": " ".join(f"{nonce}:{i}" for i in range(TOKENS))}).encode()
    await send({"type": "http.response.body", "body": b"event: done\ndata: " + done + b"\n\n", "more_body": False})
