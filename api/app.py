"""`create_app(settings)`: all wiring of the HTTP API in one place.

Served with `granian --interface asgi --factory api.app:app_factory`. Nothing bound to an
event loop is created at import time: the pool and Redis client are made in the lifespan.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api import paths
from api.admin.controllers import TenantAdminController, TenantMembersController
from api.admin.plans import PlanAdminController
from api.auth import ApiKeyAuthMiddleware
from api.chat.controllers import ChatController, ConversationController
from api.chat.limits import limits_redis
from api.chat.openai_facade import CompletionsController
from api.chat.usage import UsageRecorder
from api.collections.controllers import CollectionController
from api.deps import dependencies
from api.documents.controllers import DocumentController
from api.documents.quota import StorageUsageController
from api.health.controllers import HealthController
from api.json_bodies import QuarryRequest
from api.limits.middleware import rate_limit_middleware
from api.me import MeController
from api.metrics import METRICS_PATH, MetricsController, metrics_middleware, route_span_details
from api.openapi import document_problems
from api.problems import exception_handlers
from api.replicas import read_your_writes_middleware
from api.search.controllers import SearchController
from api.serving import OPERATOR_POOL_SIZE, Serving, api_pool_size, start_serving
from api.serving import exception_handlers as serving_exception_handlers
from api.shutdown import shutdown_lifespan
from api.sources.controllers import SourceController
from core.errors import QuarryError
from core.gc_tuning import freeze_startup_objects
from core.logs import configure_logging, request_id_var
from core.settings import Settings, load_settings
from core.telemetry import TracingArqRedis, setup_telemetry
from pipelines.embedding import EmbedderResolver
from rag.embedders import make_embedder
from rag.llm import make_llm_provider
from storage.blobs import BlobStore
from storage.db import create_pool
from storage.document_changes import DocumentChanges
from storage.replicas import ReplicaSet, WriteMarks, connect_replicas
from storage.urls import with_credentials

__all__ = ["app_factory", "create_app"]


def app_database_url(settings: Settings) -> str:
    """The application role's URL, derived from the owner URL (RLS applies to this role)."""
    if settings.database_url is None:
        raise QuarryError("DATABASE_URL is not set; start the platform with `quarry up`")
    return with_credentials(settings.database_url, settings.app_db_user, settings.app_db_password)


def app_replica_urls(settings: Settings) -> list[str]:
    """The application role's URLs of the read replicas (given like DATABASE_URL, with any role:
    a physical standby has the same roles and row-level security as its primary)."""
    return [with_credentials(url, settings.app_db_user, settings.app_db_password) for url in settings.replica_urls]


async def _start_replicas(settings: Settings, primary: Any, serving: Serving) -> ReplicaSet | None:
    """Read replicas with their health checks, or None without DATABASE_REPLICA_URLS."""
    if not settings.replica_urls:
        return None
    max_lag_s = settings.replica_max_lag_ms / 1000
    interval_s = settings.replica_check_interval_ms / 1000
    # A tenant's last write must be remembered until every replica still in use has replayed it.
    marks = WriteMarks(serving.guard, ttl_s=max_lag_s + 4 * interval_s + 10)
    return await connect_replicas(
        primary, app_replica_urls(settings), marks=marks, max_lag_s=max_lag_s, interval_s=interval_s,
        max_size=api_pool_size(settings), statement_timeout_ms=settings.db_statement_timeout_ms,
        acquire_timeout_s=settings.db_acquire_timeout_s, pgbouncer=settings.db_pgbouncer,
    )


_REQUEST_ID_KEY = "quarry.request_id"


def _request_id(scope: Scope) -> str:
    """The caller's X-Request-ID when it is sane, else a new one; fixed once per request."""
    rid = scope.get(_REQUEST_ID_KEY)
    if not isinstance(rid, str):
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming[:64] if incoming.isprintable() and incoming else uuid.uuid4().hex
        scope[_REQUEST_ID_KEY] = rid  # type: ignore[literal-required]
    return rid


def _request_id_middleware(app: ASGIApp) -> ASGIApp:
    """Makes the request id available to logs while the route runs."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        token = request_id_var.set(_request_id(scope))
        try:
            await app(scope, receive, send)
        finally:
            request_id_var.reset(token)

    return middleware


async def _send_request_id(message: Message, scope: Scope) -> None:
    """A before-send hook, so every response carries the id: also the 401s raised by the
    auth middleware and the 404/405s of routing, which no route middleware sees. Async on
    purpose: Litestar runs a sync hook in a worker thread, a thread hop per sent chunk."""
    if message["type"] == "http.response.start" and scope["type"] == ScopeType.HTTP:
        headers = list(message.get("headers") or [])
        headers.append((b"x-request-id", _request_id(scope).encode()))
        message["headers"] = headers


def create_app(settings: Settings) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # min_size=0: the API starts (and /readyz can say 503) even while Postgres is down.
        # Sized from the global connection budget; acquisitions time out into a 503 (docs/serving.md).
        app.state.pool = await create_pool(
            app_database_url(settings), min_size=0, max_size=api_pool_size(settings),
            statement_timeout_ms=settings.db_statement_timeout_ms,
            acquire_timeout_s=settings.db_acquire_timeout_s, pgbouncer=settings.db_pgbouncer,
        )
        # The operator endpoints (tenants, plans) write platform tables the app role may not
        # (storage/migrate.py): a small owner-role pool of their own, never used for tenant work.
        assert settings.database_url is not None  # app_database_url checked it
        app.state.operator_pool = await create_pool(
            settings.database_url, min_size=0, max_size=OPERATOR_POOL_SIZE,
            statement_timeout_ms=settings.db_statement_timeout_ms, acquire_timeout_s=settings.db_acquire_timeout_s,
            pgbouncer=settings.db_pgbouncer, metrics_name="operator",
        )
        # ArqRedis is a redis.asyncio.Redis that can also enqueue jobs. Built without a ping,
        # so the API starts while Redis is down (and /readyz says so).
        app.state.redis = TracingArqRedis.from_url(  # an ArqRedis that passes the trace to jobs
            settings.redis_url or "redis://127.0.0.1:6379/0",
            socket_connect_timeout=2, socket_timeout=5, health_check_interval=30,
        )
        app.state.settings = settings
        app.state.blobs = BlobStore.under(settings.data_path)
        app.state.embedder = make_embedder(settings, for_queries=True)  # loads lazily, on the first query
        # Collections a backfill switched to another embedder are searched with that one.
        app.state.embedders = EmbedderResolver(app.state.embedder, settings, for_queries=True)
        app.state.llm = make_llm_provider(settings)  # connects on the first chat
        app.state.chat_usage = UsageRecorder(app.state.pool)  # LLM tokens, written about once a second
        app.state.chat_redis = limits_redis(settings.redis_url or "redis://127.0.0.1:6379/0")  # stream slots
        # Progress streams are woken by NOTIFY on one connection, opened by the first stream (api/documents/progress.py)
        app.state.document_changes = DocumentChanges.connecting_to(app_database_url(settings),
                                                                   enabled=not settings.db_pgbouncer)
        # Caches, rate limiter and their Redis client (short timeouts, degrades when Redis is down).
        serving = start_serving(settings, app.state.pool, app_database_url(settings))
        app.state.serving = serving
        app.state.principals = serving.principals
        app.state.rate_limiter = serving.limiter
        app.state.search_cache = serving.search_cache
        # Searches and listings read from replicas when DATABASE_REPLICA_URLS is set (api.deps.ReadPool).
        app.state.replicas = await _start_replicas(settings, app.state.pool, serving)
        try:
            yield
        finally:
            if app.state.replicas is not None:
                await app.state.replicas.aclose()
            await serving.aclose()
            await app.state.llm.aclose()
            await app.state.chat_usage.aclose()
            await app.state.document_changes.stop()
            await app.state.chat_redis.aclose()
            await app.state.embedders.aclose()
            await app.state.embedder.aclose()
            await app.state.redis.aclose()
            await app.state.pool.close()
            await app.state.operator_pool.close()

    tracing = setup_telemetry(settings, "api")
    app = Litestar(
        plugins=[OpenTelemetryPlugin(OpenTelemetryConfig(
            exclude=[METRICS_PATH, paths.HEALTHZ], scope_span_details_extractor=route_span_details,
        ))] if tracing else [],
        route_handlers=[
            HealthController, MeController, TenantAdminController, TenantMembersController,
            CollectionController, DocumentController, SearchController,
            ConversationController, ChatController, CompletionsController,
            SourceController, PlanAdminController, MetricsController, StorageUsageController,
        ],
        lifespan=[lifespan, shutdown_lifespan],  # the shutdown's start ends open streams (api/shutdown.py)
        dependencies=dependencies,
        exception_handlers={**exception_handlers, **serving_exception_handlers},
        before_send=[_send_request_id],
        middleware=[
            _request_id_middleware,
            metrics_middleware,  # outermost route middleware: also counts 401s and 429s
            # OPTIONS too: Litestar's automatic OPTIONS handlers run the routes' guards, which need a
            # principal (there is no CORS preflight to serve).
            DefineMiddleware(ApiKeyAuthMiddleware, exclude=[f"^{p}" for p in paths.PUBLIC], exclude_http_methods=[]),
            rate_limit_middleware,  # after auth: limits are per key and per tenant
            *([read_your_writes_middleware] if settings.replica_urls else []),
        ],
        request_max_body_size=settings.max_json_bytes,
        request_class=QuarryRequest,  # JSON bodies that are not UTF-8 are 400s (api/json_bodies.py)
        openapi_config=OpenAPIConfig(
            title="Quarry API",
            version="0.1.0",
            path=paths.DOCS,
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
        ),
        debug=False,
    )
    document_problems(app, paths.PUBLIC)  # the problem responses in the OpenAPI schema (api/openapi.py)
    return app


def app_factory() -> Litestar:
    """Granian entry point (`--factory`): settings from the environment."""
    settings = load_settings()
    configure_logging(settings.log_level)
    app = create_app(settings)
    # Here, not in create_app: tests build many apps in one process and must not freeze theirs.
    freeze_startup_objects()  # full GC passes no longer walk the app's own objects (core/gc_tuning.py)
    return app
