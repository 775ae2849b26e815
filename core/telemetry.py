"""Tracing (OpenTelemetry), error reporting (Sentry) and job instrumentation.

- `setup_telemetry(settings, component)`: once per process. With QUARRY_OTEL_EXPORTER=console or
  otlp, a tracer provider exports spans (OTLP over HTTP; endpoint and headers from the standard
  OTEL_EXPORTER_OTLP_* variables) and asyncpg and Redis calls are traced; HTTP requests are traced
  by Litestar's OpenTelemetry plugin (api.app). Sentry starts only when SENTRY_DSN is set, never
  with request bodies, cookies, user data, frame locals or credentials (`sentry_options`, `scrub_event`).
- `instrument_jobs(functions)`: wraps arq job functions to time them (quarry_job_duration_seconds)
  and to continue the trace of the request that enqueued them: `TracingArqRedis.enqueue_job` adds
  a `trace_context` kwarg (W3C traceparent) when a span is active, the wrapper removes it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from arq import Retry
from arq.connections import ArqRedis
from arq.worker import Function, func
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from core.metrics import JOB_DURATION
from core.settings import mask_url_credentials

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = ["TRACE_KWARG", "TracingArqRedis", "instrument_jobs", "scrub_event", "scrub_text", "sentry_options",
           "setup_telemetry"]

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
_SENSITIVE_HEADERS = {"authorization", "cookie", "set-cookie", "x-api-key", "proxy-authorization",
                      "x-metrics-token"}
# Keys whose values never leave, wherever they sit in an event (extra, contexts, breadcrumbs' data,
# frame vars if a future change turned them back on): a key *containing* one of these words.
_DENY_WORDS = ("password", "passwd", "secret", "token", "api_key", "apikey", "access_key", "private_key",
               "authorization", "cookie", "credential", "dsn", "session", "signature")
# ...and keys that are sensitive as a whole: source configs carry connector credentials.
_DENY_KEYS = frozenset({"key", "config", "source_config", "raw_config", "auth", "database_url", "redis_url",
                        "database_replica_urls"})
_FILTERED = "[Filtered]"
# Bearer values and Quarry keys in free text (exception messages, log lines). Both patterns
# start with a literal and take one bounded run of a character class: linear time.
_BEARER = re.compile(r"(?i)(bearer\s)[^\s\"',;]{1,4096}")
_QUARRY_KEY = re.compile(r"qk_[A-Za-z0-9_-]{1,200}")
# `secret_access_key': 'x'`, `password=x`, `"api_token": "x"` in a message (a dict's repr, a
# command line): every repetition is bounded, so a hostile string costs linear time.
_NAMED_SECRET = re.compile(
    r"(?i)((?:secret|password|passwd|token|api_key|apikey|access_key|private_key)[a-z_]{0,40}['\"]?\s{0,8}"
    r"[:=]\s{0,8}['\"]?)[^'\"\s,;}&]{1,4096}")
_MAX_DEPTH = 20


def _sensitive_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    lowered = key.lower().replace("-", "_")
    return lowered in _DENY_KEYS or any(word in lowered for word in _DENY_WORDS)


def scrub_text(text: str) -> str:
    """Credentials in free text: URL userinfo, `password=`, bearer values, Quarry API keys."""
    if "://" in text or "password=" in text.lower():
        text = mask_url_credentials(text)
    if "earer" in text:
        text = _BEARER.sub(r"\1" + _FILTERED, text)
    if "qk_" in text:
        text = _QUARRY_KEY.sub(_FILTERED, text)
    return _NAMED_SECRET.sub(r"\1" + _FILTERED, text)


def _scrub(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if depth >= _MAX_DEPTH:
        return value if isinstance(value, (int, float, bool)) or value is None else _FILTERED
    if isinstance(value, dict):
        return {k: (_FILTERED if _sensitive_key(k) and v not in (None, "") else _scrub(v, depth + 1))
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v, depth + 1) for v in value]
    return value


def scrub_event(event: dict[str, Any], _hint: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sentry `before_send` / `before_send_transaction`: no request bodies, cookies, query
    strings, user data, frame locals or credentials leave (keys by name anywhere in the event,
    URL credentials, bearer values and API keys in any string)."""
    request = event.get("request")
    if isinstance(request, dict):
        request.pop("data", None)
        request.pop("cookies", None)
        request.pop("query_string", None)
        request.pop("env", None)
        headers = request.get("headers")
        if isinstance(headers, dict):
            request["headers"] = {k: (_FILTERED if k.lower() in _SENSITIVE_HEADERS else v)
                                  for k, v in headers.items()}
    event.pop("user", None)
    for frame in _frames(event):  # include_local_variables=False already; belt and braces
        frame.pop("vars", None)
    scrubbed: dict[str, Any] = _scrub(event)
    return scrubbed


def _frames(event: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    holders = [*((event.get("exception") or {}).get("values") or []),
               *((event.get("threads") or {}).get("values") or [])]
    for holder in holders:
        if isinstance(holder, dict):
            frames = (holder.get("stacktrace") or {}).get("frames") or []
            found += [f for f in frames if isinstance(f, dict)]
    return found


def sentry_options(settings: Settings, component: str) -> dict[str, Any]:
    """What `sentry_sdk.init` gets: no PII, no bodies, no frame locals, every event scrubbed."""
    from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber

    denylist = [*DEFAULT_DENYLIST, *_DENY_KEYS, "access_key_id", "secret_access_key", "api_key", "dsn"]
    return {
        # No send_default_pii: unset means off, and newer SDKs deprecate passing it.
        "dsn": settings.sentry_dsn, "environment": settings.sentry_environment,
        "max_request_body_size": "never", "traces_sample_rate": settings.sentry_traces_sample_rate,
        "include_local_variables": False, "event_scrubber": EventScrubber(denylist=denylist, recursive=True),
        "before_send": scrub_event, "before_send_transaction": scrub_event, "server_name": component,
    }


def _setup_sentry(settings: Settings, component: str) -> None:
    import sentry_sdk

    sentry_sdk.init(**sentry_options(settings, component))


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
