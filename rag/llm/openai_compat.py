"""Any OpenAI-compatible `POST {base_url}/chat/completions` endpoint (OpenAI, vLLM, Ollama,
llama.cpp server, LiteLLM), always streamed (server-sent events).

Retries: 429, 5xx, connection errors and timeouts are retried with exponential backoff and
jitter (honouring `Retry-After`) while nothing has been received yet; once deltas have been
handed out a retry would duplicate them, so a stream that breaks later raises
`LLMUnavailable`. A stall (no byte within `read_timeout_s`) is `LLMTimeout`. Other 4xx fail at
once. Cancelling the consuming task, or closing the iterator, closes the HTTP response and
its connection immediately, so the server sees the client go away. The API key never appears
in an error message, a log line or a repr.

Why aiohttp and not httpx (which the rest of the code base uses): relaying a stream is the
chat's hot path, one read per token for hundreds of concurrent streams. httpx/httpcore spend
~60 us of CPU per token read (an anyio cancel scope and an h11 state machine step per read);
aiohttp's C parser and buffered stream ~20 us (measured: 200 streams of 200 tokens at 50
tokens/s, docs/chat.md). Everything that arrived together is parsed together, and consecutive
text deltas of one read leave as one `TextDelta`: under load the work per token shrinks.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec

from rag.llm.base import Delta, Finish, Message, TextDelta, ToolCallDelta, ToolChoice, ToolSpec, Usage
from rag.llm.errors import LLMError, LLMMisconfigured, LLMRejected, LLMTimeout, LLMUnavailable
from rag.upstream import MISCONFIGURED_STATUSES, backoff_s, provider_message, redact, retry_after_s

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = ["RETRYABLE_STATUSES", "OpenAIChatProvider"]

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
# Connection refused/reset/closed, a broken chunked body, connect and read timeouts.
_TRANSIENT_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError)
_JSON = {"Content-Type": "application/json"}
_DRAIN_S = 1.0
_MAX_ERROR_BODY = 64 * 1024  # of an error response, for its message
_MAX_EVENT = 1024 * 1024  # one SSE line; a stream without line breaks is broken, not buffered for ever
_message_encoder = msgspec.json.Encoder()

Sleep = Callable[[float], Awaitable[None]]


class _Chunk(msgspec.Struct):
    """The parts of a `chat.completion.chunk` we read (everything else is ignored)."""

    choices: list[dict[str, Any]] = []
    usage: dict[str, Any] | None = None
    error: Any = None


_chunk_decoder = msgspec.json.Decoder(_Chunk)


class OpenAIChatProvider:
    name = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        max_retries: int = 2,
        max_connections: int = 512,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        max_retry_after_s: float = 30.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.model = model
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._api_key = api_key or None
        # No total: a long answer may stream for minutes; a stall is caught per read.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_read=read_timeout_s)
        self._read_timeout_s = read_timeout_s
        self._max_retries = max_retries
        self._max_connections = max_connections
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._max_retry_after_s = max_retry_after_s
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> OpenAIChatProvider:
        kwargs: dict[str, Any] = {
            "base_url": settings.llm_base_url,
            "model": settings.llm_model,
            "api_key": settings.llm_api_key,
            "connect_timeout_s": settings.llm_connect_timeout_s,
            "read_timeout_s": settings.llm_read_timeout_s,
            "max_retries": settings.llm_max_retries,
            "max_connections": settings.llm_max_connections,
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    def __repr__(self) -> str:  # no key, ever
        return f"OpenAIChatProvider(url={self._url!r}, model={self.model!r})"

    def _get_session(self) -> aiohttp.ClientSession:
        """One session (connection pool) per provider, made on first use inside the loop."""
        if self._session is None or self._session.closed:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0,
                                             ssl=ssl.create_default_context())
            self._session = aiohttp.ClientSession(connector=connector, headers=headers, timeout=self._timeout,
                                                  trust_env=False)
        return self._session

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def payload(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec], tool_choice: ToolChoice, max_tokens: int | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [_wire_message(m) for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if tools:
            body["tools"] = [{"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.parameters}} for t in tools]
            body["tool_choice"] = tool_choice
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        return body

    async def stream(
        self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = (), tool_choice: ToolChoice = "auto",
        max_tokens: int | None = None,
    ) -> AsyncGenerator[Delta, None]:
        body = _message_encoder.encode(self.payload(messages, tools, tool_choice, max_tokens))
        session = self._get_session()
        attempts = self._max_retries + 1
        last_problem = ""
        for attempt in range(attempts):
            delay: float | None = None
            started = False
            try:
                async with session.post(self._url, data=body, headers=_JSON) as response:
                    if response.status == 200:
                        async for delta in self._deltas(response):
                            started = True
                            yield delta
                        return
                    message = provider_message(await _read_at_most(response, _MAX_ERROR_BODY), response.reason or "")
                    if response.status not in RETRYABLE_STATUSES:
                        raise self._fatal(response.status, message)
                    last_problem = f"HTTP {response.status}: {message}"
                    delay = retry_after_s(response.headers, self._max_retry_after_s)
            except _TRANSIENT_ERRORS as exc:
                if started:
                    raise self._broken(exc) from None
                last_problem = _describe(exc)
                if isinstance(exc, aiohttp.SocketTimeoutError) and attempt + 1 == attempts:
                    raise LLMTimeout(f"the LLM sent nothing for {self._read_timeout_s:g}s "
                                     f"({attempts} attempt(s))", attempts=attempts) from None
            if attempt + 1 == attempts:
                break
            if delay is None:
                delay = backoff_s(attempt, self._backoff_base_s, self._backoff_max_s)
            log.warning("LLM request failed (%s); retry %d/%d in %.2fs",
                        redact(last_problem, self._api_key), attempt + 1, self._max_retries, delay)
            await self._sleep(delay)
        raise LLMUnavailable(
            f"the LLM is unavailable after {attempts} attempt(s): {redact(last_problem, self._api_key)}",
            attempts=attempts,
        )

    async def _deltas(self, response: aiohttp.ClientResponse) -> AsyncGenerator[Delta, None]:
        """Parse the SSE body: `data: {chunk}` lines until `data: [DONE]` (or the end of the body).
        Each read takes everything that has arrived; the text deltas in it leave as one."""
        finish_reason = "stop"
        usage: Usage | None = None
        pending = b""
        text: list[str] = []
        async for received in response.content.iter_any():
            pending += received
            if b"\n" not in received:
                if len(pending) > _MAX_EVENT:
                    raise LLMUnavailable("the LLM sent a stream line longer than 1 MiB")
                continue
            *lines, pending = pending.split(b"\n")
            if len(pending) > _MAX_EVENT:
                raise LLMUnavailable("the LLM sent a stream line longer than 1 MiB")
            for line in lines:
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments (": ping"), `event:`/`id:` fields
                data = line[5:].strip()
                if data == b"[DONE]":
                    if text:
                        yield TextDelta("".join(text))
                    yield Finish(reason=finish_reason, usage=usage)
                    await _drain(response)
                    return
                try:
                    chunk = _chunk_decoder.decode(data)
                except msgspec.DecodeError:
                    raise LLMUnavailable("the LLM sent a malformed stream chunk") from None
                if chunk.error is not None:
                    problem = redact(str(chunk.error)[:300], self._api_key)
                    raise LLMUnavailable(f"the LLM reported an error mid-stream: {problem}")
                if chunk.usage:
                    usage = Usage(prompt_tokens=int(chunk.usage.get("prompt_tokens") or 0),
                                  completion_tokens=int(chunk.usage.get("completion_tokens") or 0))
                for choice in chunk.choices[:1]:
                    delta = choice.get("delta") or {}
                    content = delta.get("content")
                    if isinstance(content, str) and content:
                        text.append(content)
                    for call in delta.get("tool_calls") or []:
                        if text:  # keep the order of text and tool-call fragments
                            yield TextDelta("".join(text))
                            text.clear()
                        function = call.get("function") or {}
                        yield ToolCallDelta(index=int(call.get("index") or 0), id=call.get("id"),
                                            name=function.get("name"), arguments=function.get("arguments") or "")
                    if choice.get("finish_reason"):
                        finish_reason = str(choice["finish_reason"])
            if text:
                yield TextDelta("".join(text))
                text.clear()
        yield Finish(reason=finish_reason, usage=usage)

    def _broken(self, exc: Exception) -> LLMError:
        if isinstance(exc, aiohttp.SocketTimeoutError):
            return LLMTimeout(f"the LLM stream stalled for more than {self._read_timeout_s:g}s")
        return LLMUnavailable(f"the LLM stream broke off: {redact(_describe(exc), self._api_key)}")


    def _fatal(self, status: int, message: str) -> LLMError:
        detail = f"the LLM answered HTTP {status}: {redact(message, self._api_key)}"
        if status in MISCONFIGURED_STATUSES:
            return LLMMisconfigured(detail, upstream_status=status)
        return LLMRejected(detail, upstream_status=status)


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read what follows [DONE] (normally just the end of the body) so the connection goes back
    to the pool instead of being closed; a server that keeps talking loses it after a moment."""
    try:
        async with asyncio.timeout(_DRAIN_S):
            await _read_at_most(response, _MAX_ERROR_BODY)
    except (TimeoutError, *_TRANSIENT_ERRORS):
        pass


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body up to its end or `limit` bytes (a body longer than that is cut, and its
    connection is closed on release rather than reused)."""
    parts: list[bytes] = []
    left = limit
    while left > 0 and (data := await response.content.read(left)):
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _wire_message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                             for c in message.tool_calls]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None and message.role != "tool":
        out["name"] = message.name
    return out
