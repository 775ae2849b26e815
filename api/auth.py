"""API-key authentication (Bearer) and role guards.

The middleware resolves `Authorization: Bearer <key>` to a `Principal` (via a SECURITY
DEFINER lookup: no tenant is known yet) and puts it on `request.user`. Guards compare roles.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from core.errors import Forbidden, Unauthorized, Unavailable
from storage.caches.principals import PrincipalCache
from storage.models import Principal, Role
from storage.repositories.api_keys import principal_for_key

__all__ = ["ApiKeyAuthMiddleware", "require_operator", "require_role"]

_RANK: dict[str, int] = {"reader": 0, "member": 1, "admin": 2}
_MAX_KEY_LEN = 200


def _unauthorized(detail: str) -> Unauthorized:
    exc = Unauthorized(detail)
    exc.headers["WWW-Authenticate"] = 'Bearer realm="quarry"'
    return exc


class ApiKeyAuthMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        header = connection.headers.get("authorization")
        if not header:
            raise _unauthorized("missing Authorization header (expected 'Bearer <api key>')")
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key or len(key) > _MAX_KEY_LEN or " " in key:
            raise _unauthorized("malformed Authorization header (expected 'Bearer <api key>')")
        if not key.startswith("qk_"):
            raise _unauthorized("invalid API key")
        pool: asyncpg.Pool = connection.app.state.pool
        # Two-tier cache (in-process, then Redis, then Postgres); see storage.caches.principals.
        principals: PrincipalCache | None = getattr(connection.app.state, "principals", None)
        try:
            if principals is not None:
                principal = await principals.principal(key)
            else:
                async with pool.acquire() as conn:
                    principal = await principal_for_key(conn, key)
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
            raise Unavailable("the database is unavailable; try again shortly") from exc
        if principal is None:
            raise _unauthorized("invalid or revoked API key")
        return AuthenticationResult(user=principal, auth=principal.key_id)


def require_role(role: Role) -> Any:
    def guard(connection: ASGIConnection[Any, Principal, Any, Any], _: BaseRouteHandler) -> None:
        if _RANK[connection.user.role] < _RANK[role]:
            raise Forbidden(f"this action needs the {role!r} role; your key has {connection.user.role!r}")

    return guard


def require_operator(connection: ASGIConnection[Any, Principal, Any, Any], _: BaseRouteHandler) -> None:
    """Platform administration: an admin key of an operator tenant."""
    user = connection.user
    if not (user.is_operator and user.role == "admin"):
        raise Forbidden("this action needs an admin key of an operator tenant")
