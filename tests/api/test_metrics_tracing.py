"""Tracing: HTTP, asyncpg and Redis spans, and the trace carried from a request into its arq job;
Sentry's event scrubbing."""

from __future__ import annotations

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from api.app import create_app
from core import telemetry
from tests.ingest_helpers import new_collection, upload_text


@pytest.fixture
def spans(monkeypatch):
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    exporter = InMemorySpanExporter()
    monkeypatch.setattr(telemetry, "_configured", False)
    yield exporter
    AsyncPGInstrumentor().uninstrument()
    RedisInstrumentor().uninstrument()
    exporter.clear()


async def test_a_request_and_its_job_share_one_trace(settings, spans, make_tenant, run_jobs):
    traced = msgspec.structs.replace(settings, otel_exporter="console")
    assert telemetry.setup_telemetry(traced, "test", exporter=spans)
    tenant = await make_tenant()
    async with AsyncTestClient(app=create_app(traced)) as client:
        cid = await new_collection(client, tenant.headers)
        await upload_text(client, tenant.headers, cid, "Traces follow a request into its background job.")
    await run_jobs()
    finished = spans.get_finished_spans()

    uploads = [s for s in finished if s.kind == SpanKind.SERVER
               and s.name == "POST /v1/collections/{collection_id}/documents"]  # route template, not raw path
    assert len(uploads) == 1, [s.name for s in finished if s.kind == SpanKind.SERVER]
    assert uploads[0].attributes["http.route"] == "/v1/collections/{collection_id}/documents"
    trace_id = uploads[0].context.trace_id
    in_trace = [s for s in finished if s.context.trace_id == trace_id]
    assert any(s.attributes.get("db.system") == "postgresql" for s in in_trace)  # asyncpg
    assert any(s.attributes.get("db.system") == "redis" for s in in_trace)  # the enqueue
    jobs = [s for s in in_trace if s.name == "job ingest_document"]
    assert len(jobs) == 1 and jobs[0].kind == SpanKind.CONSUMER
    # The job's own database work is part of the same trace, under the job span.
    assert any(s.parent is not None and s.parent.span_id == jobs[0].context.span_id for s in in_trace)


def test_sentry_events_lose_bodies_and_credentials():
    event = {
        "request": {"url": "http://x/v1/search", "data": '{"query": "secret"}', "cookies": {"a": "b"},
                    "query_string": "token=abc",
                    "headers": {"Authorization": "Bearer qk_live", "X-Request-ID": "r1", "Cookie": "a=b"}},
        "user": {"ip_address": "10.0.0.1"},
        "message": "boom",
    }
    scrubbed = telemetry.scrub_event(event)
    assert "data" not in scrubbed["request"] and "cookies" not in scrubbed["request"]
    assert "query_string" not in scrubbed["request"] and "user" not in scrubbed
    assert scrubbed["request"]["headers"]["Authorization"] == "[Filtered]"
    assert scrubbed["request"]["headers"]["Cookie"] == "[Filtered]"
    assert scrubbed["request"]["headers"]["X-Request-ID"] == "r1"
    assert "qk_live" not in repr(scrubbed)


def test_sentry_stays_off_without_a_dsn(settings, monkeypatch):
    import sentry_sdk

    monkeypatch.setattr(telemetry, "_configured", False)
    assert telemetry.setup_telemetry(msgspec.structs.replace(settings, sentry_dsn=None), "test") is False
    assert not sentry_sdk.get_client().is_active()
