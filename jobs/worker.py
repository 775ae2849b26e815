"""arq worker settings (`quarry worker` runs them). Resources are made in `startup` and closed in `shutdown`.

Tasks are registered in `FUNCTIONS`; each must be idempotent (callers pass `_job_id`), and
transient failures raise `arq.Retry` with a backoff.
"""

from __future__ import annotations

import os
from typing import Any

from arq.connections import RedisSettings

from api.app import app_database_url
from core.settings import Settings
from storage.db import create_pool

__all__ = ["FUNCTIONS", "make_worker_settings", "ping"]


async def ping(ctx: dict[str, Any], payload: str) -> dict[str, Any]:
    """Round trip through Postgres: proves a worker is alive and can reach the database."""
    async with ctx["pool"].acquire() as conn:
        now = await conn.fetchval("SELECT now()")
    return {"payload": payload, "db_time": now.isoformat(), "worker_pid": os.getpid()}


FUNCTIONS = [ping]


def make_worker_settings(settings: Settings) -> dict[str, Any]:
    async def startup(ctx: dict[str, Any]) -> None:
        ctx["settings"] = settings
        ctx["pool"] = await create_pool(app_database_url(settings), min_size=1, max_size=4)

    async def shutdown(ctx: dict[str, Any]) -> None:
        if "pool" in ctx:
            await ctx["pool"].close()

    return {
        "functions": FUNCTIONS,
        "redis_settings": RedisSettings.from_dsn(settings.redis_url or "redis://127.0.0.1:6379"),
        "on_startup": startup,
        "on_shutdown": shutdown,
        "max_jobs": 10,
        "job_timeout": 600,
        "max_tries": 5,
        "keep_result": 3600,
        "handle_signals": True,
    }

