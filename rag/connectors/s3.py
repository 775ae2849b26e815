"""S3-compatible connector (AWS S3, MinIO, Ceph, moto...): objects under a bucket prefix.

The cursor of an object is its ETag and size: an unchanged object is not downloaded. botocore
is synchronous, so listing and downloads run in worker threads. Credentials never appear in
errors or logs.

A tenant's source must never act with the platform's identity, nor reach the platform's
network:

- **Credentials**: the source's own keys, or none at all: a source without keys sends
  *unsigned* requests (`signature_version=UNSIGNED`, so botocore resolves no credentials).
  The botocore session is isolated: every session variable has its environment variable and
  config-file key removed, the config and credentials files are `/dev/null`, no profile, an
  empty credential chain (no `AWS_*` variables, shared files, container or instance-role
  metadata), `ignore_configured_endpoint_urls` (no `AWS_ENDPOINT_URL*`), `verify=True` (no
  `AWS_CA_BUNDLE`/`REQUESTS_CA_BUNDLE`), no proxies.
- **Addresses**: every connection goes through pinned connection pools: the first connection
  to a host resolves it once, checks every address with the SSRF guard and remembers them;
  later connections (retries, downloads) reuse those addresses, so a DNS answer that changes
  after the check (rebinding) is never used. The endpoint's host is resolved before the
  first request; a custom `endpoint_url` is addressed path-style so the host connected to is
  the one checked. TLS still verifies the host name (urllib3 keeps it as SNI and for the
  certificate check).

Hand-written pools because botocore has no public hook for its connection class; the hook
used (the client's URLLib3Session and its PoolManager) is checked and fails closed.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from rag.connectors.base import ConnectorError, Cursor, Fetched, ItemFailed, ScanResult, Unchanged
from rag.connectors.config import S3Config
from rag.connectors.globs import matches
from rag.connectors.netguard import BlockedAddress, NetPolicy, resolve_checked, resolve_checked_sync

__all__ = ["S3Connector", "isolated_session"]

MAX_OBJECTS = 100_000
"""Objects listed per scan at most (the listing is held in memory): beyond, the scan is
partial (nothing is deleted) and says so."""


class _Pins:
    """host:port -> the checked addresses, resolved once per scan (a refusal is remembered too)."""

    def __init__(self, policy: NetPolicy) -> None:
        self.policy = policy
        self._by_host: dict[tuple[str, int], list[str] | BlockedAddress] = {}
        self._lock = threading.Lock()

    def set(self, host: str, port: int, addresses: list[str]) -> None:
        with self._lock:
            self._by_host[(host.lower().strip("[]"), port)] = addresses

    def addresses(self, host: str, port: int) -> list[str]:
        key = (host.lower().strip("[]"), port)
        with self._lock:
            found = self._by_host.get(key)
            if found is None:
                try:
                    found = resolve_checked_sync(key[0], port, self.policy)
                except BlockedAddress as exc:
                    found = exc
                self._by_host[key] = found
        if isinstance(found, BlockedAddress):
            raise found
        return found


def _pinned_pool_classes(pins: _Pins) -> dict[str, type]:
    from botocore.awsrequest import (
        AWSHTTPConnection,
        AWSHTTPConnectionPool,
        AWSHTTPSConnection,
        AWSHTTPSConnectionPool,
    )
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
    from urllib3.util.connection import create_connection

    def connect(conn: Any) -> Any:
        error: Exception | None = None
        for address in pins.addresses(conn.host, conn.port):
            try:
                return create_connection((address, conn.port), conn.timeout, source_address=conn.source_address,
                                         socket_options=conn.socket_options)
            except TimeoutError:
                error = ConnectTimeoutError(conn, f"Connection to {conn.host} timed out")
            except OSError as exc:
                error = NewConnectionError(conn, f"Failed to establish a new connection: {exc}")
        assert error is not None
        raise error

    class PinnedHTTPConnection(AWSHTTPConnection):  # type: ignore[misc]
        def _new_conn(self) -> Any:
            return connect(self)

    class PinnedHTTPSConnection(AWSHTTPSConnection):  # type: ignore[misc]
        def _new_conn(self) -> Any:
            return connect(self)

    class PinnedHTTPPool(AWSHTTPConnectionPool):  # type: ignore[misc]
        ConnectionCls = PinnedHTTPConnection

    class PinnedHTTPSPool(AWSHTTPSConnectionPool):  # type: ignore[misc]
        ConnectionCls = PinnedHTTPSConnection

    return {"http": PinnedHTTPPool, "https": PinnedHTTPSPool}


def isolated_session() -> Any:
    """A botocore session that reads nothing of the platform: no environment variables, no
    config or credentials files, no profile, no credential chain."""
    import botocore.session
    from botocore.credentials import CredentialResolver

    variables = {name: (None, None, default, convert)
                 for name, (_, _, default, convert) in botocore.session.Session.SESSION_VARIABLES.items()}
    variables.update(config_file=(None, None, os.devnull, None), credentials_file=(None, None, os.devnull, None),
                     profile=(None, None, None, None))
    session = botocore.session.Session(session_vars=variables)
    session.register_component("credential_provider", CredentialResolver(providers=[]))
    return session


class S3Connector:
    def __init__(self, config: S3Config, *, policy: NetPolicy, max_item_bytes: int, timeout_s: float) -> None:
        self.config = config
        self.policy = policy
        self.max_item_bytes = min(max_item_bytes, config.max_item_bytes or max_item_bytes)
        self.timeout_s = min(timeout_s, config.timeout_s or timeout_s)
        self.complete = False
        self.truncated = False
        self.notes: list[str] = []
        self.pins = _Pins(policy)

    def _client(self) -> Any:
        from botocore import UNSIGNED
        from botocore.config import Config
        from botocore.httpsession import URLLib3Session

        c = self.config
        signed = bool(c.access_key_id and c.secret_access_key)
        config = Config(
            connect_timeout=self.timeout_s, read_timeout=self.timeout_s,
            retries={"max_attempts": 3, "mode": "standard"}, proxies={}, ignore_configured_endpoint_urls=True,
            s3={"addressing_style": "path"} if c.endpoint_url else None,
            **({} if signed else {"signature_version": UNSIGNED}),
        )
        keys = {"aws_access_key_id": c.access_key_id, "aws_secret_access_key": c.secret_access_key} if signed else {}
        client = isolated_session().create_client("s3", endpoint_url=c.endpoint_url, region_name=c.region,
                                                  verify=True, config=config, **keys)
        http = getattr(getattr(client, "_endpoint", None), "http_session", None)
        manager = getattr(http, "_manager", None)
        if not isinstance(http, URLLib3Session) or manager is None or not hasattr(http, "_pool_classes_by_scheme"):
            raise ConnectorError("this botocore release cannot be pinned to checked addresses; not connecting")
        pools = _pinned_pool_classes(self.pins)
        http._pool_classes_by_scheme = pools
        manager.pool_classes_by_scheme = pools
        return client

    def _list(self, client: Any) -> list[dict[str, Any]]:
        objects: list[dict[str, Any]] = []
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.config.bucket, Prefix=self.config.prefix):
            for obj in page.get("Contents", []):
                if len(objects) >= MAX_OBJECTS:
                    self.truncated = True
                    self.notes.append(f"stopped listing at {MAX_OBJECTS} objects: the objects not listed are "
                                      "kept, nothing was deleted")
                    break
                key = obj["Key"]
                rel = key[len(self.config.prefix):].lstrip("/")
                if key.endswith("/") or not rel:
                    continue  # "folder" placeholder objects
                if matches(rel, self.config.include, self.config.exclude):
                    objects.append(obj)
            if self.truncated:
                break  # before the next page is requested
        return objects

    def _get(self, client: Any, key: str) -> tuple[bytes, str | None]:
        response = client.get_object(Bucket=self.config.bucket, Key=key)
        body = response["Body"]
        try:
            data = body.read(self.max_item_bytes + 1)
        finally:
            body.close()
        if len(data) > self.max_item_bytes:
            raise ValueError(f"the object is larger than {self.max_item_bytes} bytes")
        return data, response.get("ContentType")

    async def scan(self, known: Mapping[str, Cursor]) -> AsyncIterator[ScanResult]:
        if self.config.endpoint_url:
            parts = urlsplit(self.config.endpoint_url)
            host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
            try:
                self.pins.set(host, port, await resolve_checked(host, port, self.policy))
            except BlockedAddress as exc:
                raise ConnectorError(str(exc)) from None
            except Exception as exc:
                raise ConnectorError(f"cannot reach the endpoint: {_describe(exc)}") from None
        client = await asyncio.to_thread(self._client)
        try:
            objects = await asyncio.to_thread(self._list, client)
        except Exception as exc:
            raise ConnectorError(f"cannot list s3://{self.config.bucket}/{self.config.prefix}: "
                                 f"{_describe(exc)}") from None
        for obj in objects:
            key = obj["Key"]
            cursor: Cursor = {"etag": obj.get("ETag"), "size": obj.get("Size")}
            if known.get(key) == cursor:
                yield Unchanged(key)
                continue
            if int(obj.get("Size") or 0) > self.max_item_bytes:
                yield ItemFailed(key, f"the object is larger than {self.max_item_bytes} bytes")
                continue
            try:
                data, content_type = await asyncio.to_thread(self._get, client, key)
            except Exception as exc:
                yield ItemFailed(key, f"cannot download the object: {_describe(exc)}")
                continue
            yield Fetched(key, data, cursor, filename=key.rsplit("/", 1)[-1], content_type=content_type,
                          metadata={"bucket": self.config.bucket, "key": key})
        self.complete = not self.truncated


def _describe(exc: Exception) -> str:
    """botocore errors name the operation and code, never the credentials."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        error = response["Error"]
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip()
    return f"{type(exc).__name__}: {exc}"[:300]
