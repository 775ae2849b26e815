"""Dagster resources, configured from the environment `quarry up` gives Dagster
(DATABASE_URL is the migration role's URL; every QUARRY_* setting applies too)."""


import asyncio
from typing import Any

import asyncpg
import msgspec
from dagster import ConfigurableResource

from core.settings import Settings, load_settings
from rag.embedders import Embedder, make_embedder
from storage.urls import with_credentials


class PostgresResource(ConfigurableResource):  # type: ignore[type-arg]
    """The platform database as the owner role (operational jobs span tenants)."""

    database_url: str

    def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        async def run() -> list[dict[str, Any]]:
            conn = await asyncpg.connect(self.database_url)
            try:
                return [dict(r) for r in await conn.fetch(sql, *args)]
            finally:
                await conn.close()

        return asyncio.run(run())


class QuarryResource(ConfigurableResource):  # type: ignore[type-arg]
    """The platform's settings for syncs and backfills. Tenant data is read and written as
    the application role (row-level security applies); only cross-tenant bookkeeping and
    index builds use the owner role."""

    database_url: str

    def settings(self) -> Settings:
        return load_settings(dotenv=None, database_url=self.database_url)

    def app_url(self) -> str:
        s = self.settings()
        return with_credentials(self.database_url, s.app_db_user, s.app_db_password)


class EmbedderResource(ConfigurableResource):  # type: ignore[type-arg]
    """The platform's default embedder (QUARRY_EMBEDDER): what new collections search with."""

    threads: int = 0
    """onnxruntime threads for syncs; 0: QUARRY_EMBEDDER_THREADS (the API and workers share the cores)."""

    def make(self, settings: Settings) -> Embedder:
        if self.threads > 0:
            settings = msgspec.structs.replace(settings, embedder_threads=self.threads)
        return make_embedder(settings)
