"""A simulated OpenAI-compatible LLM server, for tests and the perf suite (no model, no deps).

    python -m perf.simllm --port 8100 --ttft-ms 300 --tokens-per-s 50 [--tokens 40] [--tool-first]

Serves `POST /v1/chat/completions` (streamed or not, text or tool calls), `GET /v1/models` and
`GET /sim/stats`, with a configurable time to first token and token rate. Behaviour per request:

- scripted: `sim.fail_next(Failure(429, retry_after="1"), Failure.stall(30))` and
  `sim.reply_next(Reply(tool_calls=[ToolCallSpec("search", {"query": "x"})]), Reply(text="..."))`
  are consumed in order, failures first;
- `tool_first=True`: when tools are offered and the turn has no tool results yet, it calls the
  first tool (`search` with the last user message as the query), then answers citing [1];
- otherwise a text answer of `tokens` tokens (capped by the request's `max_tokens`); with
  `echo=True` the tokens are `<nonce>:0 <nonce>:1 ...`, the nonce being the first word of the
  last user message, so a load client can tell its stream from any other (interleaving).

It is a small asyncio HTTP/1.1 server (keep-alive, chunked streaming) that notices a client
hanging up at any moment — also while it is still "thinking" before the first token — and
records it: `sim.requests[i].outcome == "cancelled"`. Tests run it in-process on a free port:

    async with SimLLM(ttft_ms=50) as sim:
        ... OpenAIChatProvider(base_url=sim.base_url, ...) ...
        await sim.wait_for(lambda: sim.cancelled, within_s=5)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

__all__ = ["Failure", "Reply", "SimLLM", "SimRequest", "ToolCallSpec"]

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
_WORDS = ("the documents say that quarry answers questions from your own sources with citations and streams "
          "each token as soon as it is ready so clients see progress early while retrieval runs in postgres").split()
_MAX_HEADER = 64 * 1024


@dataclass(frozen=True)
class Failure:
    """One scripted misbehaviour for the next chat request: an HTTP error (`status`, optional
    `Retry-After`), or a stall of `stall_s` seconds before anything is sent (then the normal reply)."""

    status: int | None = 500
    retry_after: str | None = None
    stall_s: float = 0.0
    message: str = "simulated failure"

    @classmethod
    def stall(cls, seconds: float) -> Failure:
        return cls(status=None, stall_s=seconds)


@dataclass(frozen=True)
class ToolCallSpec:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Reply:
    """A scripted reply: text, or tool calls. `stall_after_tokens` freezes the stream after that
    many tokens for `stall_s` seconds (a provider that hangs mid-answer)."""

    text: str | None = None
    tool_calls: list[ToolCallSpec] = field(default_factory=list)
    stall_after_tokens: int | None = None
    stall_s: float = 0.0
    hold: asyncio.Event | None = None
    """In-process use: after the first token, wait until this event is set (a stream kept open
    exactly as long as a test needs it)."""


@dataclass
class SimRequest:
    id: int
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float
    first_token_at: float | None = None
    ended_at: float | None = None
    outcome: str = "pending"
    """pending | completed | cancelled (the client hung up first) | failed (scripted error)"""
    tokens_sent: int = 0

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class _Disconnected(Exception):
    pass


class SimLLM:
    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, ttft_ms: float = 300.0, tokens_per_s: float = 50.0,
        tokens: int = 40, tool_first: bool = False, echo: bool = False, api_key: str | None = None,
        model: str = "sim-llm",
        record_bodies: bool = True, max_records: int | None = None,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.ttft_s = ttft_ms / 1000
        self.tokens_per_s = tokens_per_s
        self.tokens = tokens
        self.tool_first = tool_first
        self.echo = echo
        self.api_key = api_key
        self.model = model
        self.record_bodies = record_bodies
        self.max_records = max_records
        """Keep at most this many requests in `requests` (None: all; long perf runs bound it)."""
        self.requests: list[SimRequest] = []
        self._failures: deque[Failure] = deque()
        self._replies: deque[Reply] = deque()
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self.active = 0
        self.totals = {"completed": 0, "cancelled": 0, "failed": 0}

    # --- scripting and inspection ------------------------------------------------------------

    def fail_next(self, *failures: Failure) -> None:
        self._failures.extend(failures)

    def reply_next(self, *replies: Reply) -> None:
        self._replies.extend(replies)

    @property
    def chat_requests(self) -> list[SimRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    @property
    def cancelled(self) -> list[SimRequest]:
        return [r for r in self.requests if r.outcome == "cancelled"]

    async def wait_for(self, condition: Callable[[], object], within_s: float = 5.0) -> None:
        deadline = time.monotonic() + within_s
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("the simulated LLM did not reach the expected state in time")
            await asyncio.sleep(0.01)

    def stats(self) -> dict[str, Any]:
        """Chat requests since the start, by outcome (also those trimmed from `requests`)."""
        return {"requests": sum(self.totals.values()) + self.active, "active": self.active, **self.totals}

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    async def start(self) -> SimLLM:
        self._server = await asyncio.start_server(self._connection, self.host, self.requested_port,
                                                  backlog=4096, limit=_MAX_HEADER)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            # Hanging up on every client ends each handler through its normal disconnect path.
            for writer in list(self._connections.values()):
                writer.transport.abort()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> SimLLM:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- HTTP ----------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        conn = _Conn(reader, writer)
        try:
            while True:
                received = await conn.read_request(self)
                if received is None:
                    return
                keep_alive = await self._serve(conn, *received)
                if not keep_alive:
                    return
        except (_Disconnected, ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, conn: _Conn, request: SimRequest, raw_body: bytes) -> bool:
        if request.method == "GET" and request.path.rstrip("/") == "/v1/models":
            await conn.send_json(200, {"object": "list", "data": [
                {"id": self.model, "object": "model", "created": 0, "owned_by": "simllm"}]})
            request.outcome = "completed"
            return True
        if request.method == "GET" and request.path == "/sim/stats":
            await conn.send_json(200, self.stats())
            request.outcome = "completed"
            return True
        if request.method != "POST" or request.path.rstrip("/") != "/v1/chat/completions":
            await conn.send_json(404, _error(f"no route {request.method} {request.path}"))
            request.outcome = "failed"
            return True
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            await conn.send_json(401, _error("Incorrect API key provided.", "invalid_api_key"))
            request.outcome = "failed"
            return True
        try:
            body = json.loads(raw_body)
            assert isinstance(body, dict) and isinstance(body.get("messages"), list)
        except (ValueError, AssertionError):
            await conn.send_json(400, _error("We could not parse the JSON body of your request."))
            request.outcome = "failed"
            return True
        self.active += 1
        try:
            return await self._chat(conn, request, body)
        finally:
            self.active -= 1
            request.ended_at = time.perf_counter()
            if request.outcome == "pending":
                request.outcome = "cancelled"  # left without finishing: the client hung up
            self.totals[request.outcome] += 1

    async def _chat(self, conn: _Conn, request: SimRequest, body: dict[str, Any]) -> bool:
        watcher = asyncio.ensure_future(conn.wait_disconnect())
        try:
            return await _race(self._chat_reply(conn, request, body), watcher)
        finally:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher

    async def _chat_reply(self, conn: _Conn, request: SimRequest, body: dict[str, Any]) -> bool:
        failure = self._failures.popleft() if self._failures else None
        if failure is not None:
            if failure.stall_s:
                await asyncio.sleep(failure.stall_s)
            if failure.status is not None:
                headers = {"Retry-After": failure.retry_after} if failure.retry_after is not None else {}
                await conn.send_json(failure.status, _error(failure.message, "server_error"), headers)
                request.outcome = "failed"
                return True
        reply = self._replies.popleft() if self._replies else self._default_reply(body)
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        pieces = _pieces(reply, self.tokens if max_tokens is None else min(self.tokens, int(max_tokens)))
        prompt_tokens = sum(len(str(m.get("content") or "")) // 4 + 4 for m in body["messages"])
        if body.get("stream"):
            await self._stream(conn, request, body, reply, pieces, prompt_tokens)
        else:
            await self._whole(conn, request, reply, pieces, prompt_tokens)
        request.outcome = "completed"
        return True

    def _default_reply(self, body: dict[str, Any]) -> Reply:
        messages = body["messages"]
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
        has_results = any(m.get("role") == "tool" for m in messages[last_user + 1:])
        tools = body.get("tools") or []
        if self.tool_first and tools and not has_results and body.get("tool_choice") != "none":
            name = tools[0]["function"]["name"]
            query = str(messages[last_user].get("content") or "") if last_user >= 0 else ""
            return Reply(tool_calls=[ToolCallSpec(name, {"query": query[:500]})])
        if self.echo and last_user >= 0:
            nonce = (str(messages[last_user].get("content") or "").split() or ["-"])[0][:40]
            return Reply(text=" ".join(f"{nonce}:{i}" for i in range(self.tokens)))
        return Reply(text=None)

    async def _pace(self, request: SimRequest, index: int, reply: Reply) -> None:
        """Sleep until token `index` is due (absolute schedule: no drift), stalling where scripted."""
        due = request.received_at + self.ttft_s + (index / self.tokens_per_s if self.tokens_per_s > 0 else 0)
        if reply.stall_after_tokens is not None and index >= reply.stall_after_tokens:
            due += reply.stall_s
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if reply.hold is not None and index == 1:
            await reply.hold.wait()

    async def _stream(self, conn: _Conn, request: SimRequest, body: dict[str, Any], reply: Reply,
                      pieces: list[dict[str, Any]], prompt_tokens: int) -> None:
        cid = f"chatcmpl-sim{request.id}"
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            data = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        await conn.start_stream()
        await conn.send_chunk(chunk({"role": "assistant", "content": ""}))
        for i, piece in enumerate(pieces):
            await self._pace(request, i, reply)
            if request.first_token_at is None:
                request.first_token_at = time.perf_counter()
            await conn.send_chunk(chunk(piece))
            request.tokens_sent += 1
        finish = "tool_calls" if reply.tool_calls else ("length" if _truncated(reply, pieces) else "stop")
        await conn.send_chunk(chunk({}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(pieces),
                     "total_tokens": prompt_tokens + len(pieces)}
            data = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.model,
                    "choices": [], "usage": usage}
            await conn.send_chunk(b"data: " + json.dumps(data).encode() + b"\n\n")
        await conn.send_chunk(b"data: [DONE]\n\n")
        await conn.end_stream()

    async def _whole(self, conn: _Conn, request: SimRequest, reply: Reply, pieces: list[dict[str, Any]],
                     prompt_tokens: int) -> None:
        if pieces:
            await self._pace(request, len(pieces) - 1, reply)
            request.first_token_at = time.perf_counter()
        request.tokens_sent = len(pieces)
        message: dict[str, Any] = {"role": "assistant", "content": None}
        if reply.tool_calls:
            message["tool_calls"] = [{"id": f"call_{request.id}_{i}", "type": "function",
                                      "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                                     for i, c in enumerate(reply.tool_calls)]
        else:
            message["content"] = "".join(p.get("content", "") for p in pieces)
        await conn.send_json(200, {
            "id": f"chatcmpl-sim{request.id}", "object": "chat.completion", "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if reply.tool_calls else "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(pieces),
                      "total_tokens": prompt_tokens + len(pieces)},
        })


def _pieces(reply: Reply, budget: int) -> list[dict[str, Any]]:
    """The deltas to send, one per simulated token."""
    if reply.tool_calls:
        out: list[dict[str, Any]] = []
        for i, call in enumerate(reply.tool_calls):
            args = json.dumps(call.arguments)
            third = max(1, len(args) // 3)
            fragments = [args[j:j + third] for j in range(0, len(args), third)] or [""]
            out.append({"tool_calls": [{"index": i, "id": f"call_sim_{i}", "type": "function",
                                        "function": {"name": call.name, "arguments": fragments[0]}}]})
            out.extend({"tool_calls": [{"index": i, "function": {"arguments": f}}]} for f in fragments[1:])
        return out
    if reply.text is not None:
        words = [w + " " for w in reply.text.split(" ")]
        words[-1] = words[-1].rstrip(" ")
    else:
        words = [_WORDS[i % len(_WORDS)] + " " for i in range(max(budget - 1, 0))] + ["[1]."]
    return [{"content": w} for w in words[:budget]]


def _truncated(reply: Reply, pieces: list[dict[str, Any]]) -> bool:
    return reply.text is not None and len(pieces) < len(reply.text.split(" "))


def _error(message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


async def _race(work: Any, watcher: asyncio.Future[None]) -> bool:
    """Run the reply until it ends or the client hangs up (then the reply is cancelled)."""
    task: asyncio.Task[bool] = asyncio.ensure_future(work)
    racers: set[asyncio.Future[Any]] = {task, watcher}
    done, _ = await asyncio.wait(racers, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    raise _Disconnected


class _Conn:
    """One client connection: request parsing over a byte buffer, responses, hang-up detection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()
        self.eof = False

    async def _fill(self) -> None:
        data = await self.reader.read(65536)
        if not data:
            self.eof = True
            raise _Disconnected
        self.buffer += data

    async def wait_disconnect(self) -> None:
        """Returns when the client closes the connection (bytes it sends meanwhile are kept)."""
        with contextlib.suppress(_Disconnected, ConnectionError):
            while True:
                await self._fill()

    async def read_request(self, sim: SimLLM) -> tuple[SimRequest, bytes] | None:
        try:
            while b"\r\n\r\n" not in self.buffer:
                if len(self.buffer) > _MAX_HEADER:
                    return None
                await self._fill()
        except _Disconnected:
            return None
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _version = [*lines[0].split(" "), "", ""][:3]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        self.buffer = bytearray(rest)
        while len(self.buffer) < length:
            await self._fill()
        body, self.buffer = bytes(self.buffer[:length]), self.buffer[length:]
        request = SimRequest(id=next(sim._ids), method=method, path=path, headers=headers,
                             body=body if sim.record_bodies else b"", received_at=time.perf_counter())
        sim.requests.append(request)
        if sim.max_records is not None and len(sim.requests) > sim.max_records:
            del sim.requests[: len(sim.requests) - sim.max_records]
        return request, body

    async def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}", "Content-Type: application/json",
                f"Content-Length: {len(data)}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        await self.writer.drain()

    async def start_stream(self) -> None:
        head = ["HTTP/1.1 200 OK", "Content-Type: text/event-stream", "Cache-Control: no-cache",
                "Transfer-Encoding: chunked"]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        await self.writer.drain()

    async def send_chunk(self, data: bytes) -> None:
        self.writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await self.writer.drain()

    async def end_stream(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Simulated OpenAI-compatible LLM server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--ttft-ms", type=float, default=300.0)
    parser.add_argument("--tokens-per-s", type=float, default=50.0)
    parser.add_argument("--tokens", type=int, default=40, help="tokens per text answer")
    parser.add_argument("--tool-first", action="store_true", help="call the first offered tool before answering")
    parser.add_argument("--echo", action="store_true", help="answer <first word of the question>:<i> tokens")
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args(argv)

    async def serve() -> None:
        sim = SimLLM(host=args.host, port=args.port, ttft_ms=args.ttft_ms, tokens_per_s=args.tokens_per_s,
                     tokens=args.tokens, tool_first=args.tool_first, echo=args.echo, api_key=args.api_key,
                     record_bodies=False,
                     max_records=1000)
        await sim.start()
        print(json.dumps({"simllm": sim.base_url, "ttft_ms": args.ttft_ms, "tokens_per_s": args.tokens_per_s}),
              flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await sim.stop()

    try:
        import uvloop

        uvloop.run(serve())
    except ImportError:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
