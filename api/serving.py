"""Wiring of the serving layer (pool sizing, Redis guard, caches, rate limiter), made in the
app's lifespan and kept on `app.state`. Everything here degrades when Redis is down."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import asyncpg
from litestar import Request, Response
from litestar.types import ExceptionHandlersMap
from prometheus_client import multiprocess
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from api.limits.middleware import RateLimiter
from api.limits.policy import LimitsPolicy, parse_defaults
from api.problems import problem
from core.settings import Settings
from storage.caches.bus import InvalidationBus
from storage.caches.guard import RedisGuard
from storage.caches.principals import PrincipalCache
from storage.caches.search import SearchCache
from storage.caches.versions import VersionMap

__all__ = ["ARQ_WORKER_POOL_SIZE", "Serving", "api_pool_size", "backpressure", "exception_handlers",
           "start_serving"]

ARQ_WORKER_POOL_SIZE = 4  # jobs.worker's pool per arq worker process


def listens(settings: Settings) -> bool:
    """Whether each API worker keeps a LISTEN connection for the collection versions
    (storage.caches.versions); PgBouncer's transaction pooling cannot carry LISTEN."""
    return settings.search_cache_ttl_s > 0 and not settings.db_pgbouncer


OPERATOR_POOL_SIZE = 2
"""Owner-role connections of each API worker's operator endpoints (api/app.py), opened on use."""


def api_pool_size(settings: Settings) -> int:
    """Each API worker's share of the global connection budget, less what the worker holds
    outside its pool: the LISTEN connections (collection versions, document progress) and the
    operator endpoints' small pool. At most QUARRY_DB_POOL_MAX."""
    budget = settings.db_max_connections - ARQ_WORKER_POOL_SIZE * settings.arq_workers
    listeners = (1 if listens(settings) else 0) + (0 if settings.db_pgbouncer else 1)
    per_worker = budget // settings.api_workers - listeners - OPERATOR_POOL_SIZE
    return max(1, min(settings.db_pool_max, per_worker))


def backpressure(settings: Settings) -> int:
    """Granian's --backpressure per worker. Granian counts open client *connections* against
    it, not requests in flight: with the earlier default (4 x pool, e.g. 40) keep-alive clients
    beyond 80 waited 15-60 s while the API idled (measured by the perf suite, docs/perf-suite.md).
    The DB pool's acquire timeout already bounds the work, so allow many connections."""
    return settings.api_backpressure or max(1024, 4 * api_pool_size(settings))


@dataclass
class Serving:
    redis: Redis
    bus_redis: Redis
    guard: RedisGuard
    bus: InvalidationBus
    principals: PrincipalCache
    policy: LimitsPolicy
    limiter: RateLimiter
    search_cache: SearchCache
    versions: VersionMap | None

    async def aclose(self) -> None:
        if self.versions is not None:
            await self.versions.stop()
        await self.bus.stop()
        await self.bus_redis.aclose()
        await self.redis.aclose()
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:  # this worker's live gauges leave the sums
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def start_serving(settings: Settings, pool: asyncpg.Pool, database_url: str) -> Serving:
    url = settings.redis_url or "redis://127.0.0.1:6379/0"
    timeout = settings.redis_timeout_ms / 1000
    # Caches and limits get their own client with short timeouts (the arq client on app.state.redis
    # keeps longer ones for enqueueing). One retry on a dropped connection: after a Redis restart
    # every pooled connection is stale once.
    redis = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout,
                           retry=Retry(NoBackoff(), 1), retry_on_error=[RedisConnectionError],
                           health_check_interval=30)
    # Pub/sub blocks while waiting for messages: no socket timeout there.
    bus_redis = Redis.from_url(url, socket_connect_timeout=max(timeout, 1.0), health_check_interval=15)
    guard = RedisGuard(redis, timeout_s=timeout)
    bus = InvalidationBus(bus_redis, guard)
    principals = PrincipalCache(pool, guard, bus, local_ttl_s=settings.principal_cache_local_ttl_s,
                                redis_ttl_s=settings.principal_cache_redis_ttl_s)
    policy = LimitsPolicy(pool, guard, bus, parse_defaults(settings.rate_limits),
                          local_ttl_s=settings.principal_cache_local_ttl_s,
                          redis_ttl_s=settings.principal_cache_redis_ttl_s)
    limiter = RateLimiter(guard, policy, fail_mode=settings.rate_limit_fail_mode,
                          enabled=settings.rate_limit_enabled)
    versions = VersionMap(lambda: asyncpg.connect(database_url, server_settings={
        "application_name": "quarry-listen"})) if listens(settings) else None
    search_cache = SearchCache(pool, guard, result_ttl_s=settings.search_cache_ttl_s,
                               embedding_ttl_s=settings.embedding_cache_ttl_s,
                               local_entries=settings.search_cache_local_entries, versions=versions)
    bus.start()
    if versions is not None:
        versions.start()
    return Serving(redis, bus_redis, guard, bus, principals, policy, limiter, search_cache, versions)


def _database_unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    if isinstance(exc, asyncpg.QueryCanceledError):
        detail = "the query took longer than the statement timeout; try a narrower request or later"
    else:
        detail = "the database connection failed; try again shortly"
    return problem(request, 503, detail, slug="unavailable", headers={"Retry-After": "2"})


# Database failures that are not the client's fault and usually pass: 503 + Retry-After, not 500.
# (Pool exhaustion and connect failures already arrive as core.errors.Unavailable.)
exception_handlers: ExceptionHandlersMap = {
    asyncpg.QueryCanceledError: _database_unavailable,  # statement_timeout
    asyncpg.ConnectionDoesNotExistError: _database_unavailable,  # dropped mid-write (reads retry once)
    asyncpg.PostgresConnectionError: _database_unavailable,
    asyncpg.CannotConnectNowError: _database_unavailable,
    asyncpg.TooManyConnectionsError: _database_unavailable,
    asyncpg.AdminShutdownError: _database_unavailable,
}
