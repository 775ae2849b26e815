"""Shared dependencies: the pool and Redis client live on app.state (made in lifespan)."""

from __future__ import annotations

from typing import Any

import asyncpg
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from redis.asyncio import Redis

from core.settings import Settings

__all__ = ["DbPool", "RedisClient", "dependencies"]

# Handler parameter types: the parameter name selects the dependency of the same name.
DbPool = NamedDependency[asyncpg.Pool]
RedisClient = NamedDependency[Redis]
AppSettings = NamedDependency[Settings]


def _pool(state: State) -> asyncpg.Pool:
    return state.pool


def _redis(state: State) -> Redis:
    return state.redis  # type: ignore[no-any-return]


def _settings(state: State) -> Settings:
    return state.settings  # type: ignore[no-any-return]


dependencies: dict[str, Any] = {
    "pool": Provide(_pool, sync_to_thread=False),
    "redis": Provide(_redis, sync_to_thread=False),
    "settings": Provide(_settings, sync_to_thread=False),
}
