"""Dagster resources, configured from the environment `quarry up` gives Dagster."""


import asyncio
from typing import Any

import asyncpg
from dagster import ConfigurableResource


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
