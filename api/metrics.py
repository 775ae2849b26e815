"""Prometheus: request metrics middleware and the `/metrics` endpoint.

`/metrics` is public unless QUARRY_METRICS_TOKEN is set (then `Authorization: Bearer <token>`,
compared in constant time): it reveals traffic volumes and route names, no tenant data, and a
scraper inside the cluster usually has no API key. Public is allowed only on a loopback bind:
settings refuse a non-loopback QUARRY_HOST without a token (core.settings). Under Granian with
several workers (PROMETHEUS_MULTIPROC_DIR set by `quarry up`), whichever worker answers
aggregates every process's files, arq workers included.
Scrape-time values (arq queue depth, Redis reachability) are read when the scrape comes.
"""

from __future__ import annotations

import hmac
import os
import time
from typing import Any

from arq.constants import default_queue_name
from litestar import Controller, Request, Response, get
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry import trace
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from core.errors import Unauthorized
from core.metrics import HTTP_IN_FLIGHT, HTTP_REQUEST_DURATION, HTTP_REQUESTS
from storage.caches.guard import RedisUnavailable
from storage.pooling import sample_all_pools

__all__ = ["METRICS_PATH", "MetricsController", "metrics_middleware", "route_span_details"]

METRICS_PATH = "/metrics"


def metrics_middleware(app: ASGIApp) -> ASGIApp:
    """Duration by route template (never the raw path: ids would explode the series), method
    and status, and requests in flight. Runs outermost among route middleware, so 401s and
    429s raised by authentication and rate limiting are counted too."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope.get("path_template") == METRICS_PATH:
            await app(scope, receive, send)
            return
        status = 500  # if the app fails before it starts a response
        started = time.perf_counter()
        span = trace.get_current_span()  # the HTTP server span when tracing is on
        if span.is_recording():
            template = scope.get("path_template") or "unmatched"
            span.update_name(f"{scope.get('method', '')} {template}")
            span.set_attribute("http.route", template)

        async def send_recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        HTTP_IN_FLIGHT.inc()
        try:
            await app(scope, receive, send_recording)
        except Exception as exc:  # turned into a response further out (e.g. auth's 401): count its status
            status = getattr(exc, "status", None) or getattr(exc, "status_code", None) or 500
            raise
        finally:
            HTTP_IN_FLIGHT.dec()
            labels = (scope.get("path_template") or "unmatched", scope.get("method", ""), str(status))
            HTTP_REQUEST_DURATION.labels(*labels).observe(time.perf_counter() - started)
            HTTP_REQUESTS.labels(*labels).inc()

    return middleware


class _ScrapeTimeCollector:
    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> list[Any]:
        return self.families


async def _scrape_time_families(request: Request[Any, Any, Any]) -> list[Any]:
    serving = getattr(request.app.state, "serving", None)
    up = GaugeMetricFamily("quarry_redis_up", "Whether this API process reached Redis for this scrape")
    families: list[Any] = [up]
    if serving is None:
        return families
    try:
        depth = await serving.guard.call(lambda r: r.zcard(default_queue_name))
    except RedisUnavailable:
        up.add_metric([], 0)
        return families
    up.add_metric([], 1)
    queue = GaugeMetricFamily("quarry_arq_queue_depth", "Jobs waiting in the arq queue", labels=["queue"])
    queue.add_metric([default_queue_name], depth)
    families.append(queue)
    return families


class MetricsController(Controller):
    tags = ["health"]
    opt = {"exclude_from_auth": True, "rate_class": None}
    include_in_schema = False

    @get(METRICS_PATH, operation_id="metrics")
    async def metrics(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """Prometheus metrics (text exposition format)."""
        token: str = request.app.state.settings.metrics_token
        if token:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                exc = Unauthorized("/metrics needs 'Authorization: Bearer <QUARRY_METRICS_TOKEN>'")
                exc.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
                raise exc
        sample_all_pools()
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        else:
            registry = REGISTRY
        extra = CollectorRegistry()
        extra.register(_ScrapeTimeCollector(await _scrape_time_families(request)))
        body = generate_latest(registry) + generate_latest(extra)
        return Response(body, media_type=CONTENT_TYPE_LATEST)


def route_span_details(scope: Scope) -> tuple[str, dict[str, Any]]:
    """The server span's first name: the method only. The tracing middleware runs before
    routing, and a raw path (with document ids) would make every request its own operation;
    `metrics_middleware` renames the span to "METHOD /route/{template}" once routed."""
    method = str(scope.get("method", "")).strip()
    return (method or "HTTP"), {}
