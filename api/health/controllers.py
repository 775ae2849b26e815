"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Controller, Request, Response, get

from api import paths
from api.deps import DbPool, RedisClient
from api.problems import PROBLEM_JSON

_CHECK_TIMEOUT_S = 2.0


async def _check_postgres(pool: DbPool) -> str:
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_S), pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
    except Exception as exc:  # any failure means "not ready"; report its kind, not secrets
        return f"error: {type(exc).__name__}"
    return "ok"


async def _check_redis(redis: RedisClient) -> str:
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_S):
            await redis.ping()
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


class HealthController(Controller):
    tags = ["health"]
    opt = {"exclude_from_auth": True}

    @get(paths.HEALTHZ, operation_id="healthz", sync_to_thread=False)
    def healthz(self) -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @get(paths.READYZ, operation_id="readyz")
    async def readyz(
        self, pool: DbPool, redis: RedisClient, request: Request[Any, Any, Any]
    ) -> Response[dict[str, Any]]:
        """Readiness: 200 "ready" when Postgres and Redis answer; 200 "degraded" when only Redis
        is down (searches and reads go on without cache, rate limits follow their fail mode, uploads
        cannot be queued), so a load balancer keeps the instance; 503 when Postgres is down.
        Read replicas never change the status (a replica that is down or lagging is skipped);
        their last check is reported under `replicas`."""
        pg, rd = await asyncio.gather(_check_postgres(pool), _check_redis(redis))
        checks: dict[str, Any] = {"postgres": pg, "redis": rd}
        replicas = getattr(request.app.state, "replicas", None)
        if replicas is not None:
            checks["replicas"] = replicas.status()
        if pg == "ok" and rd == "ok":
            return Response({"status": "ready", "checks": checks})
        if pg == "ok":
            return Response({"status": "degraded", "checks": checks})
        body = {
            "type": "https://quarry.dev/problems/unavailable",
            "title": "Service unavailable",
            "status": 503,
            "detail": "a dependency is not answering",
            "instance": paths.READYZ,
            "checks": checks,
        }
        return Response(body, status_code=503, media_type=PROBLEM_JSON, headers={"Retry-After": "5"})
