"""Shared dependencies: the pool and Redis client live on app.state (made in lifespan)."""

from __future__ import annotations

from typing import Any

import asyncpg
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.types import Scope
from redis.asyncio import Redis

from core.settings import Settings
from storage.models import Principal
from storage.replicas import ReplicaSet

__all__ = ["DbPool", "ReadPool", "RedisClient", "dependencies"]

# Handler parameter types: the parameter name selects the dependency of the same name
# (`pool`: the app role's; `operator_pool`: the owner role's, for operator endpoints only).
DbPool = NamedDependency[asyncpg.Pool]
# `read_pool: ReadPool`: where searches and listings read - a read replica when one is healthy
# and has replayed the caller's tenant's last write, else the primary (storage.replicas). Any:
# a replica comes as a `ReplicaRoute` (acquire() like a pool's), which type validation would refuse.
ReadPool = NamedDependency[Any]
RedisClient = NamedDependency[Redis]
AppSettings = NamedDependency[Settings]


def _pool(state: State) -> asyncpg.Pool:
    return state.pool


def _operator_pool(state: State) -> asyncpg.Pool:
    """The owner role's pool, for the operator endpoints only (tenants, plans): the app role
    cannot write platform tables (storage/migrate.py)."""
    return state.operator_pool


async def _read_pool(state: State, scope: Scope) -> Any:
    replicas: ReplicaSet | None = getattr(state, "replicas", None)
    principal = scope.get("user")
    if replicas is None or not isinstance(principal, Principal):
        return state.pool
    return await replicas.read_pool(principal.tenant_id)


def _redis(state: State) -> Redis:
    return state.redis  # type: ignore[no-any-return]


def _settings(state: State) -> Settings:
    return state.settings  # type: ignore[no-any-return]


dependencies: dict[str, Any] = {
    "pool": Provide(_pool, sync_to_thread=False),
    "operator_pool": Provide(_operator_pool, sync_to_thread=False),
    "read_pool": Provide(_read_pool),
    "redis": Provide(_redis, sync_to_thread=False),
    "settings": Provide(_settings, sync_to_thread=False),
}
