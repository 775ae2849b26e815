"""Fixtures of the ingestion job tests: a job context as arq's worker builds it, a fresh tenant."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from redis.asyncio import Redis

from storage.repositories import collections
from storage.tenancy import tenant_tx


@pytest.fixture
async def redis(settings):
    client = Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def ctx(worker_ctx, redis) -> dict[str, Any]:
    """A job context as arq's worker builds it."""
    return dict(worker_ctx, redis=redis)


async def new_collection(pool, tenant_id) -> uuid.UUID:
    async with tenant_tx(pool, tenant_id) as conn:
        return (await collections.create_collection(conn, tenant_id, f"c-{uuid.uuid4().hex[:8]}", "")).id


@pytest.fixture
async def tenant(make_tenant, pool):
    t = await make_tenant()
    return t.id, await new_collection(pool, t.id)
