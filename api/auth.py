"""API-key authentication (Bearer) and role guards.

The middleware resolves `Authorization: Bearer <key>` to a `Principal` (via a SECURITY
DEFINER lookup: no tenant is known yet) and puts it on `request.user`. Guards compare roles.

Refusing is cheap, cheapest for what an attacker sends most:
1. A bearer that is not shaped like a Quarry key (`api_keys.is_well_formed`) is a 401 with no
   I/O at all.
2. A key this process holds in its local principal tier is accepted with no I/O.
3. Otherwise the client address (`client_address`) must not be blocked for failed attempts
   (`storage.auth_failures`: 429 with Retry-After, before any lookup); then the key is looked
   up (Redis tier, then Postgres); an unknown key is remembered as a miss in both tiers
   (`storage.caches.principals`) and counts as one failure of that address.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import asyncpg
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from core.errors import Forbidden, RateLimited, Unauthorized, Unavailable
from storage.auth_failures import AuthFailureLimiter
from storage.caches.principals import PrincipalCache
from storage.models import Principal, Role
from storage.repositories.api_keys import is_well_formed, principal_for_key

__all__ = ["ApiKeyAuthMiddleware", "client_address", "parse_proxies", "require_operator", "require_role"]

_RANK: dict[str, int] = {"reader": 0, "member": 1, "admin": 2}
_MAX_HEADER_LEN = 200
_MAX_FORWARDED_LEN = 2048
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _unauthorized(detail: str) -> Unauthorized:
    exc = Unauthorized(detail)
    exc.headers["WWW-Authenticate"] = 'Bearer realm="quarry"'
    return exc


def parse_proxies(text: str) -> tuple[Network, ...]:
    """QUARRY_TRUSTED_PROXIES: comma-separated CIDRs (or single addresses)."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(scope: Any, trusted: tuple[Network, ...]) -> str:
    """Who failed: the socket peer, or (when the peer is a trusted proxy) the right-most
    X-Forwarded-For entry that is not a trusted proxy itself. IPv6 clients count per /64, the
    block a single subscriber usually gets."""
    client = scope.get("client")
    peer = _address(client[0]) if client else None
    if peer is not None and trusted and any(peer in net for net in trusted):
        forwarded = b",".join(v for k, v in scope.get("headers", ()) if k.lower() == b"x-forwarded-for")
        # The right end is what our proxies appended; a client can only pad the left end.
        hops = forwarded[-_MAX_FORWARDED_LEN:].decode("latin-1").split(",")
        for hop in reversed(hops):
            candidate = _address(hop)
            if candidate is None:
                break  # garbage from the client's side: stop at the last hop we trust
            peer = candidate
            if not any(candidate in net for net in trusted):
                break
    if peer is None:
        return "unknown"
    if isinstance(peer, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((peer, 64), strict=False))
    return str(peer)


def _failure_limiter(state: Any) -> tuple[AuthFailureLimiter | None, tuple[Network, ...]]:
    """Built on the first request that needs it (the app's state has its Redis guard by then)."""
    limiter = getattr(state, "auth_failures", None)
    if limiter is None:
        serving, settings = getattr(state, "serving", None), getattr(state, "settings", None)
        if serving is None or settings is None:
            return None, ()
        limiter = state.auth_failures = AuthFailureLimiter(serving.guard, settings.auth_failures_per_minute)
        state.trusted_proxies = parse_proxies(settings.trusted_proxies)
    return limiter, state.trusted_proxies


class ApiKeyAuthMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        header = connection.headers.get("authorization")
        if not header:
            raise _unauthorized("missing Authorization header (expected 'Bearer <api key>')")
        scheme, _, key = header[:_MAX_HEADER_LEN + 8].partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key or len(header) > _MAX_HEADER_LEN or " " in key:
            raise _unauthorized("malformed Authorization header (expected 'Bearer <api key>')")
        if not is_well_formed(key):
            raise _unauthorized("invalid API key")
        state = connection.app.state
        # Two-tier cache (in-process, then Redis, then Postgres); see storage.caches.principals.
        principals: PrincipalCache | None = getattr(state, "principals", None)
        if principals is not None and (known := principals.local_principal(key)) is not None:
            return AuthenticationResult(user=known, auth=known.key_id)
        limiter, trusted = _failure_limiter(state)
        client = client_address(connection.scope, trusted) if limiter is not None else ""
        if limiter is not None and (wait := await limiter.retry_after(client)) is not None:
            exc = RateLimited(f"too many failed authentications from this address; retry after {wait} s",
                              rate_class="auth", scope="address")
            exc.headers["Retry-After"] = str(wait)
            raise exc
        try:
            if principals is not None:
                principal = await principals.principal(key)
            else:
                async with state.pool.acquire() as conn:
                    principal = await principal_for_key(conn, key)
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
            raise Unavailable("the database is unavailable; try again shortly") from exc
        if principal is None:
            if limiter is not None:
                await limiter.record(client)
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
