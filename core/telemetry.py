"""Tracing (OpenTelemetry), error reporting (Sentry) and job instrumentation.

- `setup_telemetry(settings, component)`: once per process. With QUARRY_OTEL_EXPORTER=console or
  otlp, a tracer provider exports spans (OTLP over HTTP; endpoint and headers from the standard
  OTEL_EXPORTER_OTLP_* variables) and asyncpg and Redis calls are traced; HTTP requests are traced
  by Litestar's OpenTelemetry plugin (api.app). Sentry starts only when SENTRY_DSN is set, never
  with request bodies, cookies, user data or API keys (`scrub_event`).
- `instrument_jobs(functions)`: wraps arq job functions to time them (quarry_job_duration_seconds)
  and to continue the trace of the request that enqueued them: `TracingArqRedis.enqueue_job` adds
  a `trace_context` kwarg (W3C traceparent) when a span is active, the wrapper removes it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from arq import Retry
from arq.connections import ArqRedis
from arq.worker import Function, func
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from core.metrics import JOB_DURATION

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = ["TRACE_KWARG", "TracingArqRedis", "instrument_jobs", "scrub_event", "setup_telemetry"]

TRACE_KWARG = "trace_context"
_log = logging.getLogger("quarry.telemetry")
_configured = False
_tracer = trace.get_tracer("quarry.jobs")


def setup_telemetry(settings: Settings, component: str, *, exporter: Any = None) -> bool:
    """Configure tracing and Sentry for this process (idempotent); True if tracing is on.
    `exporter` overrides the span exporter (tests pass an in-memory one)."""
    global _configured
    if _configured:
        return settings.otel_exporter != "none" or exporter is not None
    _configured = True
    if settings.sentry_dsn:
        _setup_sentry(settings, component)
    if settings.otel_exporter == "none" and exporter is None:
        return False
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({
        "service.name": settings.otel_service_name, "service.namespace": "quarry", "quarry.component": component,
    }))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif settings.otel_exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]
    RedisInstrumentor().instrument()
    _log.info("tracing on (%s exporter) for %s", settings.otel_exporter, component)
    return True


# --- Sentry ----------------------------------------------------------------------------------
_SENSITIVE_HEADERS = {"authorization", "cookie", "set-cookie", "x-api-key", "proxy-authorization"}


def scrub_event(event: dict[str, Any], _hint: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sentry `before_send`: no request bodies, cookies, query strings or credentials leave."""
    request = event.get("request")
    if isinstance(request, dict):
        request.pop("data", None)
        request.pop("cookies", None)
        request.pop("query_string", None)
        headers = request.get("headers")
        if isinstance(headers, dict):
            request["headers"] = {k: ("[Filtered]" if k.lower() in _SENSITIVE_HEADERS else v)
                                  for k, v in headers.items()}
    event.pop("user", None)
    return event


def _setup_sentry(settings: Settings, component: str) -> None:
    import sentry_sdk

    sentry_sdk.init(
        dsn=settings.sentry_dsn, environment=settings.sentry_environment, send_default_pii=False,
        max_request_body_size="never", traces_sample_rate=settings.sentry_traces_sample_rate,
        before_send=scrub_event,  # type: ignore[arg-type]
        server_name=component,
    )


# --- arq jobs ----------------------------------------------------------------------------------
class TracingArqRedis(ArqRedis):
    """An ArqRedis that hands the current trace to the jobs it enqueues."""

    async def enqueue_job(self, function: str, *args: Any, **kwargs: Any) -> Any:
        if trace.get_current_span().get_span_context().is_valid and TRACE_KWARG not in kwargs:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            kwargs[TRACE_KWARG] = carrier
        return await super().enqueue_job(function, *args, **kwargs)


def _instrument(name: str, coroutine: Callable[..., Awaitable[Any]]) -> Any:
    @functools.wraps(coroutine)
    async def run(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        carrier = kwargs.pop(TRACE_KWARG, None)
        token = otel_context.attach(propagate.extract(carrier)) if isinstance(carrier, dict) else None
        started, status = time.perf_counter(), "error"
        try:
            with _tracer.start_as_current_span(f"job {name}", kind=trace.SpanKind.CONSUMER,
                                               attributes={"messaging.system": "arq", "job.name": name,
                                                           "job.id": str(ctx.get("job_id", ""))}):
                result = await coroutine(ctx, *args, **kwargs)
            status = "ok"
            return result
        except Retry:
            status = "retry"
            raise
        finally:
            JOB_DURATION.labels(name, status).observe(time.perf_counter() - started)
            if token is not None:
                otel_context.detach(token)

    return run


def instrument_jobs(functions: Sequence[Function | Callable[..., Awaitable[Any]]]) -> list[Function]:
    """The same arq functions (names, timeouts, retries unchanged), timed and traced."""
    wrapped: list[Function] = []
    for f in functions:
        if isinstance(f, Function):
            wrapped.append(dataclasses.replace(f, coroutine=_instrument(f.name, f.coroutine)))
        else:
            wrapped.append(func(_instrument(f.__qualname__, f), name=f.__qualname__))
    return wrapped
