"""The error responses every operation can give, declared in the OpenAPI schema.

Every error leaves as an RFC 9457 problem (api/problems.py), but Litestar documents only each
handler's success response and a generic 400. Clients generated from the schema, and the
schemathesis run in CI (tests/fuzz), need the real set: which statuses an operation can answer
and that their body is `application/problem+json`. Litestar has no app-level `responses`
parameter, so `document_problems` adds them to each route handler's own `responses` once the app
is built (the schema is generated lazily, on the first request for it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, OpenAPIType, Operation, Schema

from api.problems import PROBLEM_JSON

__all__ = ["Problem", "document_problems"]


class Problem(msgspec.Struct, kw_only=True):
    """An RFC 9457 problem. `errors` lists validation failures (422); other members may be added
    by a specific problem (e.g. `retry_after_s`, `supported`, `checks`)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    errors: list[dict[str, Any]] | msgspec.UnsetType = msgspec.UNSET


_WHY = {
    400: "Malformed request (not valid JSON, bad cursor or parameter)",
    401: "Missing, malformed, unknown or revoked API key",
    403: "The key's role or tenant may not do this",
    404: "No such resource in the caller's tenant",
    409: "Conflicts with the current state",
    413: "Request body, file or quota too large",
    415: "Unsupported media type or document format",
    422: "Well-formed but invalid content",
    429: "Rate limit, concurrency cap or budget reached (see Retry-After)",
    503: "A dependency is unavailable or the server is shutting down (see Retry-After)",
}
# What any authenticated operation can answer, whatever its parameters.
_AUTHENTICATED = (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)


def _spec(status: int) -> ResponseSpec:
    return ResponseSpec(data_container=Problem, media_type=PROBLEM_JSON, description=_WHY[status],
                        generate_examples=False)


# Operations that answer with Server-Sent Events: only, or when the body asks for `stream`.
_SSE_ONLY = frozenset({"documentEvents", "documentsEvents"})
_JSON_OR_SSE = frozenset({"sendMessage", "chat", "createChatCompletion"})
# One event of the stream (how schemathesis and OpenAPI 3.2's `itemSchema` read an event stream);
# `data` is JSON text whose shape the operation's description gives per event name.
_EVENT_STREAM = OpenAPIMediaType(schema=Schema(
    type=OpenAPIType.OBJECT, description="One Server-Sent Event; `data` is JSON text",
    properties={"event": Schema(type=OpenAPIType.STRING), "data": Schema(type=OpenAPIType.STRING),
                "id": Schema(type=OpenAPIType.STRING), "retry": Schema(type=OpenAPIType.INTEGER)}))


@dataclass
class _StreamingOperation(Operation):
    """An operation whose success is (also) `text/event-stream`: Litestar documents one media
    type per response and would call a stream `application/json`."""

    def __post_init__(self) -> None:
        for status, response in (self.responses or {}).items():
            if status.startswith("2") and isinstance(response, OpenAPIResponse):
                kept = {} if self.operation_id in _SSE_ONLY else dict(response.content or {})
                response.content = {**kept, "text/event-stream": _EVENT_STREAM}


def document_problems(app: Litestar, public_paths: Iterable[str]) -> None:
    """Declare the problem responses of every HTTP handler (public routes: 400 and 503 only) and
    the event-stream responses of the streaming ones. A handler's own `responses` win."""
    public = tuple(public_paths)
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if not isinstance(handler, HTTPRouteHandler):
                continue
            statuses = (400, 503) if route.path.startswith(public) else _AUTHENTICATED
            handler.responses = {**{s: _spec(s) for s in statuses}, **(handler.responses or {})}
            if handler.operation_id in _SSE_ONLY | _JSON_OR_SSE:
                handler.operation_class = _StreamingOperation
