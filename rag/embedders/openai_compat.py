"""Any OpenAI-compatible `POST {base_url}/embeddings` endpoint (OpenAI, vLLM, Ollama, TEI...).

Transient failures (429, 500, 502, 503, 504, timeouts, dropped connections) are retried with
exponential backoff and jitter, honouring `Retry-After`; when the retries run out the call
raises `EmbeddingUnavailable` (503). Other 4xx fail at once: `EmbedderMisconfigured` for
401/403/404 (key, model or URL is wrong), `EmbeddingRejected` (400) for the rest. The API key
never appears in an error message or a log line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

from rag.embedders.base import Vectors, check_texts, empty_vectors, l2_normalize
from rag.embedders.errors import EmbedderMisconfigured, EmbeddingRejected, EmbeddingUnavailable
from rag.upstream import MISCONFIGURED_STATUSES, backoff_s, provider_message, redact, retry_after_s

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = ["RETRYABLE_STATUSES", "OpenAIEmbedder"]

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
_TRANSIENT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)

Sleep = Callable[[float], Awaitable[None]]


class OpenAIEmbedder:
    """Safe to share across coroutines of one event loop; the HTTP client is made on first use."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        dim: int,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        max_retries: int = 3,
        batch_size: int = 64,
        max_concurrency: int = 4,
        max_tokens: int = 8191,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 20.0,
        max_retry_after_s: float = 60.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if batch_size < 1 or max_concurrency < 1 or max_retries < 0:
            raise ValueError("batch_size and max_concurrency must be >= 1, max_retries >= 0")
        self.name = f"openai:{model}"
        self.dim = dim
        self.max_tokens = max_tokens
        self.model = model
        self.batch_size = batch_size
        self._url = base_url.rstrip("/") + "/embeddings"
        self._api_key = api_key or None
        self._timeout_s = timeout_s
        self._max_retries = max_retries
        self._max_concurrency = max_concurrency
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._max_retry_after_s = max_retry_after_s
        self._sleep = sleep
        self._client: httpx.AsyncClient | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> OpenAIEmbedder:
        kwargs: dict[str, Any] = {
            "base_url": settings.openai_base_url,
            "model": settings.openai_embed_model,
            "dim": settings.openai_embed_dim,
            "api_key": settings.openai_api_key,
            "timeout_s": settings.openai_timeout_s,
            "max_retries": settings.openai_max_retries,
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    def __repr__(self) -> str:  # no key, ever
        return f"OpenAIEmbedder(url={self._url!r}, model={self.model!r}, dim={self.dim})"

    def _get_client(self) -> httpx.AsyncClient:
        if self._client is None:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            self._client = httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(self._timeout_s),
                limits=httpx.Limits(max_connections=self._max_concurrency),
            )
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # --- embedding -----------------------------------------------------------------------

    async def embed(self, texts: Sequence[str]) -> Vectors:
        items = check_texts(texts)
        if not items:
            return empty_vectors(self.dim)
        batches = [items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        if len(batches) == 1:
            return await self._embed_batch(batches[0])
        gate = asyncio.Semaphore(self._max_concurrency)

        async def one(batch: list[str]) -> Vectors:
            async with gate:
                return await self._embed_batch(batch)

        tasks = [asyncio.create_task(one(batch)) for batch in batches]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return np.concatenate(results)

    async def _embed_batch(self, batch: list[str]) -> Vectors:
        response = await self._post({"model": self.model, "input": batch})
        return self._parse(response, len(batch))

    async def _post(self, payload: dict[str, Any]) -> httpx.Response:
        client = self._get_client()
        attempts = self._max_retries + 1
        last_problem = ""
        for attempt in range(attempts):
            delay: float | None = None
            try:
                response = await client.post(self._url, json=payload)
            except _TRANSIENT_ERRORS as exc:
                last_problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                status = response.status_code
                if status == 200:
                    return response
                message = provider_message(response.content, response.reason_phrase)
                if status not in RETRYABLE_STATUSES:
                    raise self._fatal(status, message)
                last_problem = f"HTTP {status}: {message}"
                delay = retry_after_s(response.headers, self._max_retry_after_s)
            if attempt + 1 == attempts:
                break
            if delay is None:
                delay = backoff_s(attempt, self._backoff_base_s, self._backoff_max_s)
            log.warning(
                "embedding request failed (%s); retry %d/%d in %.2fs",
                redact(last_problem, self._api_key), attempt + 1, self._max_retries, delay,
            )
            await self._sleep(delay)
        raise EmbeddingUnavailable(
            f"embedding provider unavailable after {attempts} attempt(s): {redact(last_problem, self._api_key)}",
            attempts=attempts,
        )



    def _fatal(self, status: int, message: str) -> Exception:
        detail = f"embedding provider answered HTTP {status}: {redact(message, self._api_key)}"
        if status in MISCONFIGURED_STATUSES:
            return EmbedderMisconfigured(detail, upstream_status=status)
        return EmbeddingRejected(detail, upstream_status=status)



    def _parse(self, response: httpx.Response, expected: int) -> Vectors:
        try:
            body = response.json()
            data = body["data"]
            rows = sorted(((int(item["index"]), item["embedding"]) for item in data), key=lambda r: r[0])
            vectors = np.asarray([embedding for _, embedding in rows], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbeddingUnavailable(f"embedding provider sent a malformed response ({exc!r})") from None
        if [index for index, _ in rows] != list(range(expected)):
            raise EmbeddingUnavailable(
                f"embedding provider returned {len(rows)} vectors (indexes not 0..{expected - 1})"
            )
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            got = vectors.shape[1] if vectors.ndim == 2 else "ragged"
            raise EmbedderMisconfigured(
                f"{self.name} returned {got}-dimensional vectors but {self.dim} are configured "
                "(QUARRY_OPENAI_EMBED_DIM)",
                expected_dim=self.dim,
                actual_dim=got,
            )
        return l2_normalize(vectors)
