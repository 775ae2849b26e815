"""/metrics: Prometheus text with real values for the series the dashboards use."""

from __future__ import annotations

import msgspec
from prometheus_client.parser import text_string_to_metric_families

from tests.api.helpers import assert_problem
from tests.ingest_helpers import new_collection, upload_text


def parse(text: str) -> dict[str, list]:
    """family name -> samples (name, labels, value)."""
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(families, sample_name: str, **labels) -> float | None:
    family = families.get(sample_name.removesuffix("_total").removesuffix("_count").removesuffix("_sum")
                          .removesuffix("_bucket"), [])
    for s in family:
        if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


async def test_metrics_expose_the_serving_series(settings, app_client, make_tenant, run_jobs):
    tenant = await make_tenant()
    limited = msgspec.structs.replace(settings, rate_limits="read=3/1000,search=100/1000,write=0/0,upload=0/0",
                                      redis_timeout_ms=3000)
    async with app_client(limited) as client:
        for _ in range(5):  # 3 allowed, 2 refused
            await client.get("/v1/me", headers=tenant.headers)
        assert_problem(await client.get("/v1/me"), 401)
        cid = await new_collection(client, tenant.headers)
        await upload_text(client, tenant.headers, cid, "Metrics make the invisible visible.")
        before = parse((await client.get("/metrics")).text)
        await run_jobs()
        for _ in range(2):
            await client.post("/v1/search", json={"query": "invisible"}, headers=tenant.headers)
        r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    families = parse(r.text)

    # Request durations by route template (not raw paths), method and status.
    assert value(families, "quarry_http_request_duration_seconds_count", route="/v1/me", method="GET",
                 status="200") >= 3
    assert value(families, "quarry_http_request_duration_seconds_count", route="/v1/me", status="429") >= 2
    assert value(families, "quarry_http_request_duration_seconds_count", route="/v1/me", status="401") >= 1
    assert value(families, "quarry_http_request_duration_seconds_count", route="/v1/search", status="200") >= 2
    assert value(families, "quarry_http_request_duration_seconds_count", method="POST",
                 route="/v1/collections/{collection_id}/documents", status="202") >= 1
    assert value(families, "quarry_http_request_duration_seconds_sum", route="/v1/search") > 0
    assert not any(s.labels.get("route", "").count("-") >= 4 for s in families["quarry_http_request_duration_seconds"])
    assert value(families, "quarry_http_requests_in_flight") == 0  # /metrics itself is not counted

    # Pool gauges: this app's pool has connections open, none in use or waited for now.
    assert value(families, "quarry_db_pool_size", pool="primary") >= 1
    assert value(families, "quarry_db_pool_in_use", pool="primary") == 0
    assert value(families, "quarry_db_pool_waiting", pool="primary") == 0

    # Caches: the principal was a miss once then local hits; the second search hit the result cache.
    assert value(families, "quarry_cache_misses_total", cache="principal") >= 1
    assert value(families, "quarry_cache_hits_total", cache="principal", tier="local") >= 4
    assert value(families, "quarry_cache_hits_total", cache="search", tier="local") >= 1  # this process stored it
    assert value(families, "quarry_cache_misses_total", cache="search") >= 1

    assert value(families, "quarry_rate_limit_rejections_total", rate_class="read", scope="key") >= 2

    # Queue depth was read at scrape time: the upload's job was waiting before run_jobs.
    assert value(parse_before := before, "quarry_arq_queue_depth", queue="arq:queue") >= 1, parse_before
    assert value(families, "quarry_arq_queue_depth", queue="arq:queue") is not None
    assert value(families, "quarry_redis_up") == 1
    assert value(families, "quarry_job_duration_seconds_count", job="ingest_document", status="ok") >= 1
    assert "quarry_llm_tokens" in families  # declared for the chat code to increment


async def test_metrics_token(settings, app_client):
    async with app_client(msgspec.structs.replace(settings, metrics_token="s3cret-token")) as client:
        assert_problem(await client.get("/metrics"), 401)
        assert_problem(await client.get("/metrics", headers={"Authorization": "Bearer wrong"}), 401)
        r = await client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
        assert r.status_code == 200 and "quarry_http_request_duration_seconds" in r.text


async def test_metrics_when_redis_is_down(settings, app_client):
    down = msgspec.structs.replace(settings, redis_url="redis://127.0.0.1:1/0")
    async with app_client(down) as client:
        r = await client.get("/metrics")
    assert r.status_code == 200
    families = parse(r.text)
    assert value(families, "quarry_redis_up") == 0
    assert "quarry_arq_queue_depth" not in families
