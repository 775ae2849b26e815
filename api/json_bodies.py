"""The one place JSON request bodies are decoded: text that is not Unicode is a 400, never a 500.

msgspec already refuses a lone surrogate written as a JSON escape (`"\\ud918"`), but raises
`UnicodeDecodeError` (not a `msgspec.DecodeError`) for a body that is not valid UTF-8 - which is
how a lone surrogate arrives when a client encodes it raw (CESU-8 / `surrogatepass`, as
schemathesis does). Litestar lets that error through as a 500. Every JSON body Litestar decodes
for a handler passes through `QuarryRequest.json` (set as the app's `request_class`), and the
few handlers that read a raw body decode it with `decode_json_body`; both refuse such text here,
before any string can reach a database driver that cannot encode it.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from litestar import Request

from core.errors import BadRequest, Unprocessable

__all__ = ["NOT_UTF8", "QuarryRequest", "decode_json_body"]

T = TypeVar("T")
NOT_UTF8 = "the request body is not valid UTF-8 (lone surrogates and other invalid sequences are refused)"


class QuarryRequest(Request[Any, Any, Any]):
    async def json(self) -> Any:
        try:
            return await super().json()
        except UnicodeError:
            raise BadRequest(NOT_UTF8) from None


def decode_json_body(body: bytes, into: type[T]) -> T:
    """A raw JSON body as `into`: 400 for bytes that are not UTF-8 JSON, 422 for the wrong shape."""
    try:
        return msgspec.json.decode(body, type=into)
    except msgspec.ValidationError as exc:
        raise Unprocessable(str(exc)) from None
    except msgspec.DecodeError:
        raise BadRequest("the request body is not valid JSON") from None
    except UnicodeError:
        raise BadRequest(NOT_UTF8) from None
