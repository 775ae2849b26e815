"""Helpers for tests that ingest documents end to end (upload → arq job → search)."""

from __future__ import annotations

import asyncio
from typing import Any

from arq.connections import RedisSettings
from arq.worker import Worker

from jobs.worker import FUNCTIONS


async def run_jobs(settings: Any, ctx: dict[str, Any], timeout_s: float = 120) -> None:
    """Run every queued job to completion with an in-process burst worker (real Valkey).

    A job that can never finish (e.g. one waiting forever for a tenant slot) would keep a
    burst worker polling for ever; the timeout turns that into a failure that names it."""
    worker = Worker(
        functions=FUNCTIONS, redis_settings=RedisSettings.from_dsn(settings.redis_url), burst=True,
        ctx=ctx, handle_signals=False, poll_delay=0.05, max_jobs=4,
    )
    try:
        async with asyncio.timeout(timeout_s):
            await worker.main()
    except TimeoutError:
        queued = await worker.pool.zrange("arq:queue", 0, -1, withscores=True)
        raise AssertionError(f"queued jobs did not finish within {timeout_s:.0f}s: {queued}") from None
    finally:
        await worker.close()


async def upload_text(client: Any, headers: dict[str, str], collection_id: Any, text: str, **extra: Any) -> Any:
    r = await client.post(f"/v1/collections/{collection_id}/documents", json={"text": text, **extra},
                          headers=headers)
    assert r.status_code == 202, r.text
    return r.json()["documents"][0]


async def new_collection(client: Any, headers: dict[str, str], name: str = "docs") -> str:
    r = await client.post("/v1/collections", json={"name": name}, headers=headers)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])
