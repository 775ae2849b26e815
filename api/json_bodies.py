"""The one place JSON request bodies are decoded: text the database cannot store is a 400, never a 500.

Two kinds of text reach no database driver or Postgres column intact:

- a lone surrogate. msgspec already refuses one written as a JSON escape (`"\\ud918"`), but
  raises `UnicodeDecodeError` (not a `msgspec.DecodeError`) for a body that is not valid UTF-8 -
  which is how a lone surrogate arrives when a client encodes it raw (CESU-8 / `surrogatepass`,
  as schemathesis does). Litestar let that error through as a 500.
- NUL (U+0000, the escape `\\u0000`): valid JSON and valid Unicode, but Postgres `text` and
  `jsonb` cannot hold it (asyncpg: CharacterNotInRepertoireError / UntranslatableCharacterError).

Every JSON body Litestar decodes for a handler passes through `QuarryRequest.json` (the app's
`request_class`); the few handlers that read a raw body or a JSON query parameter use
`decode_json_body` / `refuse_nul`. The NUL walk over the decoded value runs only when the body
holds the escape at all (a substring test in C), so ordinary bodies cost nothing more.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from litestar import Request

from core.errors import BadRequest, Unprocessable

__all__ = ["NOT_UTF8", "NUL_TEXT", "QuarryRequest", "decode_json_body", "refuse_nul"]

T = TypeVar("T")
NOT_UTF8 = "the request body is not valid UTF-8 (lone surrogates and other invalid sequences are refused)"
NUL_TEXT = "the request holds a NUL character (U+0000), which text cannot contain here"
_NUL_ESCAPE = b"\\u0000"


class QuarryRequest(Request[Any, Any, Any]):
    async def json(self) -> Any:
        try:
            value = await super().json()
        except UnicodeError:
            raise BadRequest(NOT_UTF8) from None
        if _NUL_ESCAPE in await self.body():
            refuse_nul(value)
        return value


def decode_json_body(body: bytes, into: type[T]) -> T:
    """A raw JSON body as `into`: 400 for bytes that are not UTF-8 JSON or hold NUL, 422 for
    the wrong shape."""
    try:
        value = msgspec.json.decode(body, type=into)
    except msgspec.ValidationError as exc:
        raise Unprocessable(str(exc)) from None
    except msgspec.DecodeError:
        raise BadRequest("the request body is not valid JSON") from None
    except UnicodeError:
        raise BadRequest(NOT_UTF8) from None
    if _NUL_ESCAPE in body:
        refuse_nul(msgspec.to_builtins(value))
    return value


def refuse_nul(value: Any) -> None:
    """400 when any string (key or value) of decoded JSON holds NUL. Iterative: no recursion limit."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                raise BadRequest(NUL_TEXT)
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
