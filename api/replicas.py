"""Read-your-writes with read replicas: a tenant's write requests mark it (storage.replicas.WriteMarks),
so its next searches and listings read from the primary until a replica has replayed the write.

The mark is set before the last byte of the response leaves, so a client that waits for the
response and then lists cannot overtake it, on this worker or any other. Installed only when
DATABASE_REPLICA_URLS is set.
"""

from __future__ import annotations

from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from storage.models import Principal
from storage.replicas import ReplicaSet

__all__ = ["read_your_writes_middleware"]

_READ_METHODS = {"GET", "HEAD", "OPTIONS"}
# POST endpoints that store nothing a search or listing shows.
_READ_OPERATIONS = {"search", "chat", "createChatCompletion"}


def read_your_writes_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        replicas: ReplicaSet | None = getattr(scope["app"].state, "replicas", None)
        principal: Any = scope.get("user")
        handler = scope.get("route_handler")
        if scope["type"] != ScopeType.HTTP or replicas is None or replicas.marks is None \
                or not isinstance(principal, Principal) or scope.get("method", "GET") in _READ_METHODS \
                or getattr(handler, "operation_id", None) in _READ_OPERATIONS:
            await app(scope, receive, send)
            return
        marks = replicas.marks
        marked = False

        async def send_marking(message: Message) -> None:
            nonlocal marked
            if message["type"] == "http.response.body" and not message.get("more_body", False) and not marked:
                marked = True  # the handler has committed (a stream: everything it wrote)
                await marks.mark(principal.tenant_id)
            await send(message)

        try:
            await app(scope, receive, send_marking)
        finally:
            if not marked:  # failed, or the client left mid-stream: it may have written anyway
                await marks.mark(principal.tenant_id)

    return middleware
