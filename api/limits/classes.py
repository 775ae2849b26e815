"""Route classes: what a request costs, for rate limiting.

A handler may say its class with ``opt={"rate_class": "search"}`` (or ``None`` to be exempt).
Otherwise the class comes from its operation id (below: handlers owned by other packages are
classified here, so their modules need not know about rate limiting), then from its path
(everything under /v1/admin is `admin`), then from its method (reads vs writes).
"""

from __future__ import annotations

from typing import Any, Literal

from api import paths

__all__ = ["RATE_CLASSES", "RateClass", "classify"]

RateClass = Literal["read", "write", "search", "chat", "upload", "admin"]
RATE_CLASSES: tuple[RateClass, ...] = ("read", "write", "search", "chat", "upload", "admin")

_BY_OPERATION: dict[str, RateClass] = {
    "search": "search",
    "chat": "chat",
    "sendMessage": "chat",
    "createChatCompletion": "chat",
    "uploadDocuments": "upload",
    "syncSource": "upload",  # a sync ingests like an upload does
}
_READ_METHODS = {"GET", "HEAD", "OPTIONS"}
_EXEMPT = object()


def classify(handler: Any, method: str, path: str) -> RateClass | None:
    """The handler's route class, or None when it is exempt from rate limiting."""
    opt = getattr(handler, "opt", None) or {}
    if "rate_class" in opt:
        value: RateClass | None = opt["rate_class"]
        return value
    operation = getattr(handler, "operation_id", None)
    if isinstance(operation, str) and operation in _BY_OPERATION:
        return _BY_OPERATION[operation]
    if path == paths.ADMIN or path.startswith(paths.ADMIN + "/"):
        return "admin"
    return "read" if method.upper() in _READ_METHODS else "write"
