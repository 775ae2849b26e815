"""One exception root. The API maps each class to an RFC 9457 problem with its status."""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BadRequest", "Conflict", "Forbidden", "NotFound", "PayloadTooLarge", "QuarryError",
    "RateLimited", "Unauthorized", "Unavailable", "Unprocessable", "UnsupportedMediaType",
]


class QuarryError(Exception):
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    type_slug: ClassVar[str] = "internal"

    def __init__(self, detail: str = "", **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra
        self.headers: dict[str, str] = {}


class BadRequest(QuarryError):
    status, title, type_slug = 400, "Bad request", "bad-request"


class Unauthorized(QuarryError):
    status, title, type_slug = 401, "Unauthorized", "unauthorized"


class Forbidden(QuarryError):
    status, title, type_slug = 403, "Forbidden", "forbidden"


class NotFound(QuarryError):
    status, title, type_slug = 404, "Not found", "not-found"


class Conflict(QuarryError):
    status, title, type_slug = 409, "Conflict", "conflict"


class PayloadTooLarge(QuarryError):
    status, title, type_slug = 413, "Payload too large", "payload-too-large"


class UnsupportedMediaType(QuarryError):
    status, title, type_slug = 415, "Unsupported media type", "unsupported-media-type"


class Unprocessable(QuarryError):
    status, title, type_slug = 422, "Unprocessable content", "validation"


class RateLimited(QuarryError):
    status, title, type_slug = 429, "Too many requests", "rate-limited"


class Unavailable(QuarryError):
    status, title, type_slug = 503, "Service unavailable", "unavailable"
