"""S3-compatible connector (AWS S3, MinIO, Ceph, moto...): objects under a bucket prefix.

The cursor of an object is its ETag and size: an unchanged object is not downloaded. boto3
is synchronous, so listing and downloads run in worker threads. The endpoint's address is
checked by the SSRF guard before any request. Credentials never appear in errors or logs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from rag.connectors.base import ConnectorError, Cursor, Fetched, ItemFailed, ScanResult, Unchanged
from rag.connectors.config import S3Config
from rag.connectors.globs import matches
from rag.connectors.netguard import NetPolicy, resolve_checked

__all__ = ["S3Connector"]


class S3Connector:
    def __init__(self, config: S3Config, *, policy: NetPolicy, max_item_bytes: int, timeout_s: float) -> None:
        self.config = config
        self.policy = policy
        self.max_item_bytes = min(max_item_bytes, config.max_item_bytes or max_item_bytes)
        self.timeout_s = min(timeout_s, config.timeout_s or timeout_s)
        self.complete = False
        self.notes: list[str] = []

    def _client(self) -> Any:
        import boto3
        from botocore.config import Config

        c = self.config
        return boto3.session.Session().client(
            "s3", endpoint_url=c.endpoint_url, region_name=c.region,
            aws_access_key_id=c.access_key_id, aws_secret_access_key=c.secret_access_key,
            config=Config(connect_timeout=self.timeout_s, read_timeout=self.timeout_s,
                          retries={"max_attempts": 3, "mode": "standard"}, proxies={}),
        )

    def _list(self, client: Any) -> list[dict[str, Any]]:
        objects = []
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.config.bucket, Prefix=self.config.prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                rel = key[len(self.config.prefix):].lstrip("/")
                if key.endswith("/") or not rel:
                    continue  # "folder" placeholder objects
                if matches(rel, self.config.include, self.config.exclude):
                    objects.append(obj)
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
            await resolve_checked(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80),
                                  self.policy)
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
        self.complete = True


def _describe(exc: Exception) -> str:
    """botocore errors name the operation and code, never the credentials."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        error = response["Error"]
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip()
    return f"{type(exc).__name__}: {exc}"[:300]
