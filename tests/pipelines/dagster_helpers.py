"""Run Dagster in-process against the test database (in a worker thread: the assets and
the sensor call asyncio.run, which cannot nest in the test's running loop)."""

from __future__ import annotations

import asyncio
from typing import Any

from dagster import DagsterInstance, materialize

from pipelines.resources import EmbedderResource, QuarryResource
from pipelines.sync_assets import SOURCES_PARTITIONS, source_sync
from rag.embedders import Embedder

_SHARED: list[Embedder] = []


class _Borrowed:
    """The session's embedder, not closed by the run that borrows it."""

    def __init__(self, inner: Embedder) -> None:
        self._inner = inner
        self.name, self.dim, self.max_tokens = inner.name, inner.dim, inner.max_tokens

    async def embed(self, texts: Any) -> Any:
        return await self._inner.embed(texts)

    async def aclose(self) -> None:
        return None


class SharedEmbedderResource(EmbedderResource):
    """Test override: the session's already-loaded MiniLM instead of loading one per run."""

    def make(self, settings: Any) -> Embedder:
        return _Borrowed(_SHARED[0])  # type: ignore[return-value]


def share_embedder(embedder: Embedder) -> None:
    _SHARED[:] = [embedder]


async def materialize_source(
    instance: DagsterInstance, admin_url: str, source_id: str, tags: dict[str, str] | None = None
) -> Any:
    if source_id not in instance.get_dynamic_partitions(SOURCES_PARTITIONS.name):
        instance.add_dynamic_partitions(SOURCES_PARTITIONS.name, [source_id])
    return await asyncio.to_thread(
        materialize, [source_sync], instance=instance, partition_key=source_id, tags=tags or {},
        resources={"quarry": QuarryResource(database_url=admin_url), "embedder": SharedEmbedderResource()},
        raise_on_error=False,
    )
