"""Every error leaves as an RFC 9457 problem (`application/problem+json`), never a traceback."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from core.errors import QuarryError

__all__ = ["exception_handlers", "problem"]

PROBLEM_JSON = "application/problem+json"
_log = logging.getLogger("quarry.api")

_TITLES = {
    400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
    405: "Method not allowed", 409: "Conflict", 413: "Payload too large",
    415: "Unsupported media type", 422: "Unprocessable content", 429: "Too many requests",
    500: "Internal error", 503: "Service unavailable",
}


def problem(
    request: Request[Any, Any, Any], status: int, detail: str, *, title: str | None = None,
    slug: str | None = None, headers: dict[str, str] | None = None, **extra: Any,
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {
        "type": f"https://quarry.dev/problems/{slug or status}",
        "title": title or _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extra,
    }
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _quarry_error(request: Request[Any, Any, Any], exc: QuarryError) -> Response[dict[str, Any]]:
    return problem(request, exc.status, exc.detail, title=exc.title, slug=exc.type_slug,
                   headers=exc.headers or None, **exc.extra)


def _sent_json(request: Request[Any, Any, Any]) -> bool:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return media in ("", "application/json") or media.endswith("+json")


def _validation_error(
    request: Request[Any, Any, Any], exc: ValidationException
) -> Response[dict[str, Any]]:
    # Litestar answers 400 for a body of the wrong shape; that is unprocessable content (422),
    # unless the body was not JSON at all (then the media type is the problem: 415).
    if not _sent_json(request):
        return _not_json(request)
    errors = exc.extra if isinstance(exc.extra, list) else []
    detail = str(exc.detail)
    first = errors[0] if errors and isinstance(errors[0], dict) else {}
    if first.get("message"):  # say what is wrong, not only that something is
        key = first.get("key") if first.get("key") != "data" else None  # "data": the whole body
        where = ".".join(str(part) for part in (first.get("source"), key) if part)
        detail = f"{detail}: {first['message']}" + (f" (at {where})" if where else "")
    return problem(request, 422, detail, slug="validation", errors=errors)


def _not_json(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    return problem(request, 415, "this endpoint takes application/json", slug="unsupported-media-type")


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    detail = str(exc.detail)
    if exc.status_code == 400 and not exc.extra and request.method in ("POST", "PUT", "PATCH"):
        # Litestar's body decoding failed: the body is not JSON (or not sent as JSON).
        if not _sent_json(request):
            return _not_json(request)
        return problem(request, 400, f"the request body is not valid JSON ({detail})", slug="malformed-body")
    if exc.status_code == 413:
        detail = "the request body is larger than this endpoint accepts"
    extra: dict[str, Any] = {"errors": exc.extra} if exc.extra else {}
    return problem(request, exc.status_code, detail, headers=exc.headers or None, **extra)


def _not_unicode(request: Request[Any, Any, Any], exc: UnicodeError) -> Response[dict[str, Any]]:
    # A backstop: request text is checked where it is decoded (api/json_bodies.py), so this only
    # fires for a path that decodes client bytes on its own - still the client's bad text.
    _log.warning("text that is not valid Unicode on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return problem(request, 400, "the request holds text that is not valid Unicode", slug="malformed-body")


def _unstorable_text(request: Request[Any, Any, Any], exc: asyncpg.DataError) -> Response[dict[str, Any]]:
    # A backstop like the one above, for text Postgres cannot store (NUL in a path parameter, a
    # multipart file name or field): JSON bodies are refused where they are decoded.
    _log.warning("text the database cannot store on %s %s: %s", request.method, request.url.path, exc)
    return problem(request, 400, "the request holds text that cannot be stored (e.g. a NUL character, U+0000)",
                   slug="bad-request")


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    _log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(request, 500, "an unexpected error occurred; it has been logged")


exception_handlers: ExceptionHandlersMap = {
    QuarryError: _quarry_error,
    ValidationException: _validation_error,
    HTTPException: _http_error,
    UnicodeError: _not_unicode,
    asyncpg.CharacterNotInRepertoireError: _unstorable_text,  # NUL in text (22021)
    asyncpg.UntranslatableCharacterError: _unstorable_text,  # \u0000 in jsonb (22P05)
    Exception: _unexpected,
}

