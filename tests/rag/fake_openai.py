"""A local fake of OpenAI-compatible HTTP APIs, for tests (no network, no new dependency).

`FakeServer` is the generic core: a `ThreadingHTTPServer` on 127.0.0.1 (free port) in a
background thread, a route table `{(method, path): handler}`, a request log, an optional
delay and a scripted queue of failures served before the routes answer. Because it runs in
its own thread it serves sync and async clients alike, on any event loop.

`FakeOpenAI` adds `POST /v1/embeddings` with vectors from `HashingEmbedder` (deterministic
per input text). Later fakes (chat completions, SSE streams) add routes the same way:

    with FakeOpenAI(dim=64) as fake:
        fake.fail_next(Failure(429, retry_after="0"), Failure(500))
        ... OpenAIEmbedder(base_url=fake.base_url, ...) ...
        assert len(fake.requests) == 3
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from rag.embedders.hashing import HashingEmbedder

__all__ = ["Failure", "FakeOpenAI", "FakeServer", "RecordedRequest", "Reply"]


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    """A response. `body` may be JSON-able (sent as JSON), bytes, or an iterable of byte chunks
    (sent with chunked transfer encoding, e.g. for server-sent events)."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Failure:
    """One scripted misbehaviour, consumed by the next request (whatever its route).

    `status` with a JSON error body (and `Retry-After` if given); `disconnect=True` closes the
    connection without answering; `delay_s` stalls first (longer than a client's timeout, it
    makes a timeout) and then, when `status` is None, answers normally.
    """

    status: int | None = 500
    message: str = "scripted failure"
    retry_after: str | None = None
    disconnect: bool = False
    delay_s: float = 0.0

    @classmethod
    def timeout(cls, delay_s: float) -> Failure:
        return cls(status=None, delay_s=delay_s)

    @classmethod
    def dropped(cls) -> Failure:
        return cls(status=None, disconnect=True)


Handler = Callable[[RecordedRequest], Reply]


def openai_error(status: int, message: str, kind: str = "invalid_request_error") -> Reply:
    return Reply(status, {"error": {"message": message, "type": kind, "param": None, "code": None}})


class FakeServer:
    def __init__(self, *, delay_s: float = 0.0) -> None:
        self.routes: dict[tuple[str, str], Handler] = {}
        self.requests: list[RecordedRequest] = []
        self.errors: list[BaseException] = []  # exceptions raised by route handlers (answered 500)
        self.delay_s = delay_s
        self._failures: deque[Failure] = deque()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- scripting ---

    def route(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method.upper(), path)] = handler

    def fail_next(self, *failures: Failure) -> None:
        with self._lock:
            self._failures.extend(failures)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    # --- lifecycle ---

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeServer:
        handler_class = type("BoundHandler", (_Handler,), {"fake": self})
        self._httpd = _Server(("127.0.0.1", 0), handler_class)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="fake-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- dispatch (server threads) ---

    def _dispatch(self, request: RecordedRequest) -> Reply | Failure:
        with self._lock:
            self.requests.append(request)
            failure = self._failures.popleft() if self._failures else None
        if self.delay_s:
            time.sleep(self.delay_s)
        if failure is not None:
            if failure.delay_s:
                time.sleep(failure.delay_s)
            if failure.disconnect or failure.status is not None:
                return failure
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            return openai_error(404, f"no route {request.method} {request.path}")
        try:
            return handler(request)
        except Exception as exc:  # a broken fake should fail loudly, not look like a dropped connection
            with self._lock:
                self.errors.append(exc)
            return openai_error(500, f"fake route handler raised {exc!r}", "server_error")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up mid-reply is expected here


class _Handler(BaseHTTPRequestHandler):
    fake: FakeServer
    protocol_version = "HTTP/1.1"
    timeout = 5  # idle keep-alive connections end instead of pinning a thread

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = RecordedRequest(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        outcome = self.fake._dispatch(request)
        if isinstance(outcome, Failure):
            if outcome.disconnect:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            assert outcome.status is not None
            reply = openai_error(outcome.status, outcome.message, "server_error")
            if outcome.retry_after is not None:
                reply.headers["Retry-After"] = outcome.retry_after
        else:
            reply = outcome
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        headers = dict(reply.headers)
        body = reply.body
        if body is None or isinstance(body, (bytes, bytearray, dict, list, str)):
            if body is None:
                data = b""
            elif isinstance(body, (bytes, bytearray)):
                data = bytes(body)
            else:
                data = json.dumps(body).encode()
                headers.setdefault("Content-Type", "application/json")
            headers["Content-Length"] = str(len(data))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            return
        # Anything else is an iterable of byte chunks (a stream).
        headers["Transfer-Encoding"] = "chunked"
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        for chunk in body:
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = do_PUT = do_DELETE = _handle


class FakeOpenAI(FakeServer):
    """OpenAI's embeddings endpoint. `dim` is what it serves (set it apart from the client's
    configured dim to test the mismatch check); `shuffle` returns `data` out of order (the
    "index" fields stay right); `api_key` makes it answer 401 to any other bearer token,
    echoing the wrong key in the message the way OpenAI does."""

    EMBEDDINGS = "/v1/embeddings"

    def __init__(
        self, *, dim: int = 64, api_key: str | None = None, shuffle: bool = False, delay_s: float = 0.0
    ) -> None:
        super().__init__(delay_s=delay_s)
        self.dim = dim
        self.api_key = api_key
        self.shuffle = shuffle
        self.route("POST", self.EMBEDDINGS, self._embeddings)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def embedding_requests(self) -> list[RecordedRequest]:
        return self.requests_to(self.EMBEDDINGS)

    def _embeddings(self, request: RecordedRequest) -> Reply:
        if self.api_key is not None:
            given = request.headers.get("authorization", "").removeprefix("Bearer ")
            if given != self.api_key:
                return openai_error(401, f"Incorrect API key provided: {given}.", "invalid_api_key")
        try:
            payload = request.json()
        except ValueError:
            return openai_error(400, "We could not parse the JSON body of your request.")
        texts = payload.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not payload.get("model"):
            return openai_error(400, "you must provide a model parameter")
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            return openai_error(400, "'$.input' is invalid. Please check the API reference.")
        vectors = HashingEmbedder(self.dim).embed_sync(texts)
        data = [
            {"object": "embedding", "index": i, "embedding": [float(x) for x in vector]}
            for i, vector in enumerate(vectors)
        ]
        if self.shuffle:
            random.Random(len(texts)).shuffle(data)
            if len(data) > 1 and [d["index"] for d in data] == list(range(len(data))):
                data.reverse()
        tokens = sum(len(t.split()) for t in texts)
        return Reply(200, {
            "object": "list", "data": data, "model": payload["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })
