"""The SSRF guard's address classes: every special-purpose range and every IPv6 form that
embeds an IPv4 address is refused (unless the operator allows it); public addresses pass."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest

from rag.connectors import ConfigError, NetPolicy, validate_config
from rag.connectors.config import FolderRoots
from rag.connectors.netguard import BlockedAddress, non_public_reason, resolve_checked, resolve_checked_sync

REFUSED = [
    # IPv4
    ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("10.1.2.3", "private"), ("172.16.0.1", "private"),
    ("172.31.255.255", "private"), ("192.168.1.1", "private"), ("169.254.169.254", "link-local"),
    ("100.64.0.1", "CGNAT"), ("100.127.255.254", "CGNAT"), ("0.0.0.0", "this-network"), ("0.1.2.3", "this-network"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("233.252.0.1", "multicast"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "broadcast"), ("192.0.0.9", "IETF"), ("192.0.2.1", "documentation"),
    ("198.51.100.7", "documentation"), ("203.0.113.9", "documentation"), ("198.18.0.1", "benchmarking"),
    ("192.88.99.1", "6to4 relay"),
    # IPv6 proper
    ("::1", "loopback"), ("::", "unspecified"), ("fe80::1", "link-local"), ("fc00::1", "unique local"),
    ("fd12:3456::1", "unique local"), ("fec0::1", "site-local"), ("ff02::1", "multicast"), ("ff0e::1", "multicast"),
    ("2001:db8::1", "documentation"), ("3fff::1", "documentation"), ("100::1", "discard"), ("2001:20::1", "ORCHID"),
    ("5f00::1", "SRv6"),
    # IPv6 forms that embed an IPv4 address
    ("::ffff:127.0.0.1", "IPv4-mapped 127.0.0.1: loopback"), ("::ffff:10.0.0.1", "IPv4-mapped 10.0.0.1: private"),
    ("::ffff:169.254.169.254", "link-local"), ("::ffff:100.64.0.1", "CGNAT"),
    ("::127.0.0.1", "IPv4-compatible"), ("::8.8.8.8", "IPv4-compatible"), ("::a9fe:a9fe", "IPv4-compatible"),
    ("::ffff:0:10.0.0.1", "IPv4-translated"), ("::ffff:0:8.8.8.8", "IPv4-translated"),
    ("64:ff9b::127.0.0.1", "NAT64"), ("64:ff9b::a9fe:a9fe", "NAT64"), ("64:ff9b::8.8.8.8", "NAT64"),
    ("64:ff9b:1::10.0.0.1", "local-use NAT64"), ("64:ff9b:1:ffff::1", "local-use NAT64"),
    ("2002:7f00:1::1", "6to4 of 127.0.0.1: loopback"), ("2002:a00:1::1", "6to4 of 10.0.0.1: private"),
    ("2002:a9fe:a9fe::1", "6to4 of 169.254.169.254: link-local"), ("2002:6440:1::1", "6to4 of 100.64.0.1"),
    ("2001::1", "Teredo"), ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e",
          "::ffff:8.8.8.8", "2002:808:808::1"]


@pytest.mark.parametrize(("text", "reason"), REFUSED)
def test_non_public_addresses_are_refused(text: str, reason: str) -> None:
    address = ipaddress.ip_address(text)
    found = non_public_reason(address)
    assert found is not None and reason in found, (text, found)
    assert not NetPolicy("").permits(address, "example.com", 443)


@pytest.mark.parametrize("text", PUBLIC)
def test_public_addresses_pass(text: str) -> None:
    address = ipaddress.ip_address(text)
    assert non_public_reason(address) is None
    assert NetPolicy("").permits(address, "example.com", 443)


def test_operator_allow_list() -> None:
    ip = ipaddress.ip_address
    assert NetPolicy("64:ff9b::/96").permits(ip("64:ff9b::808:808"), "x", 1)
    assert not NetPolicy("64:ff9b::/96").permits(ip("2002:a00:1::1"), "x", 1)
    # An allowed IPv4 is allowed through its mapped form (a dual-stack socket reaches it), nothing else is.
    assert NetPolicy("127.0.0.1:9000").permits(ip("::ffff:127.0.0.1"), "x", 9000)
    assert not NetPolicy("127.0.0.1:9000").permits(ip("::127.0.0.1"), "x", 9000)
    assert not NetPolicy("127.0.0.1:9000").permits(ip("64:ff9b::127.0.0.1"), "x", 9000)


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: list[str]) -> None:
    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in answers]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize("hidden", ["64:ff9b::a9fe:a9fe", "::ffff:10.0.0.1", "::a00:1", "2002:a00:1::1", "2001::1"])
async def test_one_bad_answer_among_good_ones_blocks_the_host(monkeypatch: pytest.MonkeyPatch, hidden: str) -> None:
    _fake_dns(monkeypatch, ["93.184.216.34", hidden])
    with pytest.raises(BlockedAddress, match="non-public address"):
        resolve_checked_sync("rebind.example", 443, NetPolicy(""))
    with pytest.raises(BlockedAddress, match="non-public address"):
        await resolve_checked("rebind.example", 443, NetPolicy(""))


def test_good_answers_are_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, ["93.184.216.34", "2606:4700:4700::1111", "93.184.216.34"])
    assert resolve_checked_sync("ok.example", 443, NetPolicy("")) == ["93.184.216.34", "2606:4700:4700::1111"]


@pytest.mark.parametrize("url", ["http://[64:ff9b::a9fe:a9fe]/", "http://[::ffff:169.254.169.254]/latest",
                                 "http://[::7f00:1]:8080/", "http://[2002:a9fe:a9fe::1]/", "http://100.64.1.1/",
                                 "http://[fec0::1]/", "http://0.0.0.0:6379/"])
def test_literal_embedded_addresses_are_refused_when_saved(url: str) -> None:
    roots = FolderRoots.parse("", data_dir=None)
    for kind, config in (("website", {"start_url": url}), ("s3", {"bucket": "docs", "endpoint_url": url})):
        with pytest.raises(ConfigError) as info:
            validate_config(kind, config, policy=NetPolicy(""), folder_roots=roots, tenant_id="t")
        assert info.value.field in ("config.start_url", "config.endpoint_url")
