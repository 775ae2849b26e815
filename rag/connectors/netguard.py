"""SSRF guard for outbound fetches: refuse private, loopback, link-local (and other non-public)
addresses unless the operator allows them.

The check happens where the connection is made: `GuardedBackend` is an httpcore network
backend that resolves the host itself, checks EVERY resolved address, and connects to a
checked address (never resolving twice, so DNS rebinding cannot swap in another address).
Redirects are new connections, so each hop is checked too. TLS still verifies the original
host name (httpcore passes it as SNI / server_hostname).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

__all__ = ["BlockedAddress", "GuardedBackend", "NetPolicy", "guarded_client", "resolve_checked"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class BlockedAddress(httpx.ConnectError):
    """A destination refused by the SSRF guard (no connection was attempted)."""


class NetPolicy:
    """Which non-public destinations may be reached anyway (QUARRY_CONNECTOR_ALLOW_PRIVATE):
    `*` (all), `host:port` or `ip:port` (that endpoint only), an IP or a CIDR (any port)."""

    def __init__(self, allow: str | Iterable[str] = "") -> None:
        entries = [e.strip() for e in (allow.split(",") if isinstance(allow, str) else allow) if e.strip()]
        self.allow_all = "*" in entries
        self.endpoints: set[tuple[str, int]] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            if entry == "*":
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            host, sep, port = entry.rpartition(":")
            if not sep or not port.isdigit():
                raise ValueError(f"invalid QUARRY_CONNECTOR_ALLOW_PRIVATE entry {entry!r} "
                                 "(expected *, host:port, an IP or a CIDR)")
            self.endpoints.add((host.strip("[]").lower(), int(port)))

    def permits(self, address: IPAddress, host: str, port: int) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_global and not address.is_multicast:
            return True
        if self.allow_all:
            return True
        if (host.lower(), port) in self.endpoints or (str(address), port) in self.endpoints:
            return True
        return any(address in network for network in self.networks)


async def resolve_checked(host: str, port: int, policy: NetPolicy) -> list[str]:
    """Every address `host` resolves to, if ALL are permitted; else BlockedAddress."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpx.ConnectError(f"cannot resolve {host}: {exc.strerror}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if not policy.permits(address, host, port):
            raise BlockedAddress(
                f"refused to connect to {host}:{port}: it resolves to the non-public address {address} "
                "(the operator may allow it with QUARRY_CONNECTOR_ALLOW_PRIVATE)"
            )
    return addresses


class GuardedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, policy: NetPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,  # noqa: ASYNC109
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await resolve_checked(host, port, self._policy)
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddress("unix sockets are not reachable by connectors")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_client(policy: NetPolicy, *, timeout_s: float, user_agent: str) -> httpx.AsyncClient:
    """An httpx client whose every connection goes through the guard. Proxies from the
    environment are ignored (the guard must see the real destination); redirects are left
    to the caller, which applies its own rules per hop."""
    transport = httpx.AsyncHTTPTransport(retries=0)
    # httpx has no public hook for the network backend: replace its pool by an equivalent one.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(), max_connections=10, max_keepalive_connections=5,
        keepalive_expiry=5.0, http1=True, http2=False, network_backend=GuardedBackend(policy),
    )
    return httpx.AsyncClient(
        transport=transport, timeout=httpx.Timeout(timeout_s), follow_redirects=False, trust_env=False,
        headers={"User-Agent": user_agent},
    )
