"""What the OpenAI-compatible clients (rag/embedders/openai_compat.py, rag/llm/openai_compat.py)
share about talking to an upstream HTTP API: backoff, Retry-After, the provider's error message,
and keeping API keys out of every message."""

from __future__ import annotations

import email.utils
import json
import random
import re
import time
from collections.abc import Mapping

__all__ = ["MISCONFIGURED_STATUSES", "backoff_s", "provider_message", "redact", "retry_after_s"]

# Authentication or a wrong URL/model: retrying cannot help, the operator must fix settings.
MISCONFIGURED_STATUSES = frozenset({401, 403, 404})
_SECRET_LIKE = re.compile(r"\b(sk|pk|rk)-[A-Za-z0-9_\-*.]{6,}")


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """Exponential, capped, with "equal jitter": at least half the step, at most all of it."""
    step = min(max_s, base_s * 2.0**attempt)
    return step / 2 + random.uniform(0, step / 2)  # noqa: S311 - jitter, not crypto


def retry_after_s(headers: Mapping[str, str], max_s: float) -> float | None:
    """The `Retry-After` header (seconds or an HTTP date) bounded to [0, max_s]; None if absent.
    `headers`: case-insensitive (httpx's or aiohttp's)."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), max_s)


def provider_message(content: bytes, reason: str) -> str:
    """OpenAI's `{"error": {"message": ...}}` in an error response's body, else the start of the
    body, else the status line's reason."""
    text = content.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        return text[:300].strip() or reason
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:500]
        if isinstance(error, str):
            return error[:500]
        if isinstance(body.get("message"), str):
            return str(body["message"])[:500]
    return text[:300].strip()


def redact(text: str, api_key: str | None) -> str:
    """`text` without the key, nor anything shaped like one (an upstream may echo a wrong key)."""
    if api_key:
        text = text.replace(api_key, "***")
    return _SECRET_LIKE.sub(r"\1-***", text)
