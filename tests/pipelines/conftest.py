"""Fixtures for sync, backfill and Dagster tests.

A safety net first: these tests make connectors refuse private addresses, and a refusal
must happen BEFORE any connection. `no_outbound` makes any TCP connection to a non-loopback
address fail loudly inside the test process, so a guard bug can never send traffic out.
"""

from __future__ import annotations

import ipaddress
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from core.settings import Settings
from pipelines.embedding import EmbedderResolver
from pipelines.sync import SyncDeps
from storage.repositories import collections, sources
from storage.tenancy import tenant_tx


class OutboundBlocked(AssertionError):
    pass


@pytest.fixture(autouse=True)
def no_outbound(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    original = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            if not ipaddress.ip_address(host.split("%", 1)[0]).is_loopback:
                raise OutboundBlocked(f"test tried to connect to {address!r}")
        return original(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    yield


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    root = tmp_path / "sources"
    root.mkdir()
    return root


@pytest.fixture
def tenant_dir(folder_root: Path) -> Callable[[Any], Path]:
    """The folder a tenant's folder sources may read: `<root>/<tenant id>` (made here)."""

    def factory(tenant_id: Any) -> Path:
        path = folder_root / str(tenant_id)
        path.mkdir(exist_ok=True)
        return path

    return factory


@pytest.fixture
def sync_settings(settings: Settings, folder_root: Path) -> Settings:
    return msgspec.structs.replace(settings, connector_folder_roots=str(folder_root))


@pytest.fixture
async def make_deps(pool: Any, worker_ctx: dict, tmp_path: Path) -> AsyncIterator[Callable[..., SyncDeps]]:  # type: ignore[type-arg]
    resolvers: list[EmbedderResolver] = []

    def factory(settings: Settings, **extra: Any) -> SyncDeps:
        resolver = EmbedderResolver(worker_ctx["embedder"], settings, extra.get("embedders"))
        resolvers.append(resolver)
        return SyncDeps(pool=pool, settings=settings, tokenizer=worker_ctx["tokenizer"],
                        parser=worker_ctx["parser"], embedders=resolver, scratch_dir=tmp_path / "scratch")

    yield factory
    for resolver in resolvers:  # embedders it built (e.g. OpenAI-compatible clients) are closed
        await resolver.aclose()


@pytest.fixture
def make_source(pool: Any) -> Callable[..., Awaitable[sources.Source]]:
    """A collection and a source in it, written straight through the repositories."""

    async def factory(tenant_id: uuid.UUID, kind: str, config: dict[str, Any], **extra: Any) -> sources.Source:
        async with tenant_tx(pool, tenant_id) as conn:
            collection = await collections.create_collection(conn, tenant_id, f"c-{uuid.uuid4().hex[:8]}", "")
            return await sources.create_source(
                conn, tenant_id=tenant_id, collection_id=collection.id, name=f"s-{uuid.uuid4().hex[:8]}",
                kind=kind, config=config, schedule=extra.get("schedule"), enabled=True,  # type: ignore[arg-type]
            )

    return factory
