"""SSRF guard for outbound fetches: refuse private, loopback, link-local (and other non-public)
addresses unless the operator allows them.

The check happens where the connection is made: `GuardedBackend` is an httpcore network
backend that resolves the host itself, checks EVERY resolved address, and connects to a
checked address (never resolving twice, so DNS rebinding cannot swap in another address).
Redirects are new connections, so each hop is checked too. TLS still verifies the original
host name (httpcore passes it as SNI / server_hostname).

What is "public" is decided here, not by `ipaddress.is_global` alone: Python's tables vary by
release and call NAT64 (`64:ff9b::/96`), IPv4-compatible (`::/96`) and 6to4 addresses global,
although each reaches an IPv4 address through a translator or relay. So every address is
classified by `non_public_reason`: explicit tables of special-purpose IPv4 and IPv6 ranges
(RFC 6890 and the IANA registries), IPv6 forms that embed an IPv4 address (mapped: its IPv4
is checked; 6to4: allowed only when the embedded IPv4 is public; NAT64, compatible,
translated and Teredo: refused), then Python's flags as a last net.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

__all__ = [
    "BlockedAddress", "GuardedBackend", "NetPolicy", "guarded_client", "non_public_reason", "resolve_checked",
    "resolve_checked_sync",
]

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
            address = address.ipv4_mapped  # the IPv4 address a dual-stack socket reaches
        if non_public_reason(address) is None:
            return True
        if self.allow_all:
            return True
        if (host.lower(), port) in self.endpoints or (str(address), port) in self.endpoints:
            return True
        return any(address in network for network in self.networks)


def _nets(*cidrs: str) -> tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...]:
    return tuple((ipaddress.ip_network(c.split(" ", 1)[0]), c.split(" ", 1)[1]) for c in cidrs)


_V4_SPECIAL = _nets(
    "0.0.0.0/8 this-network", "10.0.0.0/8 private", "100.64.0.0/10 shared (CGNAT)", "127.0.0.0/8 loopback",
    "169.254.0.0/16 link-local", "172.16.0.0/12 private", "192.0.0.0/24 IETF protocol assignments",
    "192.0.2.0/24 documentation", "192.88.99.0/24 6to4 relay anycast", "192.168.0.0/16 private",
    "198.18.0.0/15 benchmarking", "198.51.100.0/24 documentation", "203.0.113.0/24 documentation",
    "224.0.0.0/4 multicast", "240.0.0.0/4 reserved (and broadcast)",
)
_V6_SPECIAL = _nets(
    "::/96 IPv4-compatible (and unspecified, loopback)", "::ffff:0:0:0/96 IPv4-translated",
    "64:ff9b::/96 NAT64", "64:ff9b:1::/48 local-use NAT64", "100::/64 discard-only",
    "2001::/32 Teredo", "2001:10::/28 ORCHID", "2001:20::/28 ORCHIDv2", "2001:db8::/32 documentation",
    "3fff::/20 documentation", "5f00::/16 SRv6 SIDs", "fc00::/7 unique local", "fe80::/10 link-local",
    "fec0::/10 site-local", "ff00::/8 multicast",
)


def non_public_reason(address: IPAddress) -> str | None:
    """Why `address` is not a public unicast destination, or None if it is one."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            inner = non_public_reason(address.ipv4_mapped)
            return None if inner is None else f"IPv4-mapped {address.ipv4_mapped}: {inner}"
        for network, label in _V6_SPECIAL:
            if address in network:
                return label
        if address.sixtofour is not None:
            # 2002::/16 reaches the IPv4 address it embeds: that address decides (whatever
            # this Python release's flags say about 2002::/16 itself).
            inner = non_public_reason(address.sixtofour)
            return None if inner is None else f"6to4 of {address.sixtofour}: {inner}"
    else:
        for network, label in _V4_SPECIAL:
            if address in network:
                return label
    if (address.is_multicast or address.is_loopback or address.is_link_local or address.is_unspecified
            or address.is_reserved or address.is_private or not address.is_global):
        return "not globally reachable"
    return None


def _check_all(host: str, port: int, addresses: list[str], policy: NetPolicy) -> list[str]:
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if not policy.permits(address, host, port):
            raise BlockedAddress(
                f"refused to connect to {host}:{port}: it resolves to the non-public address {address} "
                f"({non_public_reason(address)}; the operator may allow it with QUARRY_CONNECTOR_ALLOW_PRIVATE)"
            )
    return addresses


def _literal(host: str) -> list[str] | None:
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        return None


async def resolve_checked(host: str, port: int, policy: NetPolicy) -> list[str]:
    """Every address `host` resolves to, if ALL are permitted; else BlockedAddress."""
    addresses = _literal(host)
    if addresses is None:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpx.ConnectError(f"cannot resolve {host}: {exc.strerror}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    return _check_all(host, port, addresses, policy)


def resolve_checked_sync(host: str, port: int, policy: NetPolicy) -> list[str]:
    """`resolve_checked` for synchronous clients (boto3 runs in worker threads)."""
    addresses = _literal(host)
    if addresses is None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpx.ConnectError(f"cannot resolve {host}: {exc.strerror}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    return _check_all(host, port, addresses, policy)


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
