"""S3 sync against moto's S3-compatible server on 127.0.0.1: add, unchanged (ETag), update,
delete; credentials never leak into run errors or logs."""

from __future__ import annotations

import logging
import socket

import boto3
import msgspec
import pytest
from moto.server import ThreadedMotoServer

from pipelines.sync import sync_source
from storage.tenancy import tenant_tx

SECRET = "moto-secret-key-never-shown-1234"


@pytest.fixture(scope="module")
def s3_endpoint():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}", port
    server.stop()


@pytest.fixture
def bucket(s3_endpoint):
    url, _ = s3_endpoint
    client = boto3.session.Session().client("s3", endpoint_url=url, region_name="us-east-1",
                                            aws_access_key_id="AKIATEST", aws_secret_access_key=SECRET)
    name = f"docs-{id(client) % 100000}"
    client.create_bucket(Bucket=name)
    return client, name


async def _docs(pool, tenant_id, source_id):
    async with tenant_tx(pool, tenant_id, readonly=True) as conn:
        rows = await conn.fetch("SELECT uri, content_hash FROM documents WHERE source_id = $1", source_id)
    return {r["uri"]: r["content_hash"] for r in rows}


async def test_s3_sync_cycle(s3_endpoint, bucket, pool, make_tenant, make_source, make_deps, settings, caplog):
    url, port = s3_endpoint
    client, name = bucket
    client.put_object(Bucket=name, Key="handbook/intro.md", Body=b"# Intro\n\nOnboarding covers the rock saw.")
    client.put_object(Bucket=name, Key="handbook/safety.txt", Body=b"Wear goggles when splitting flint.")
    client.put_object(Bucket=name, Key="other/ignored.txt", Body=b"outside the prefix")
    client.put_object(Bucket=name, Key="handbook/image.png", Body=b"\x89PNG\r\n\x1a\n....")
    tenant = await make_tenant()
    source = await make_source(tenant.id, "s3", {
        "bucket": name, "prefix": "handbook/", "endpoint_url": url, "access_key_id": "AKIATEST",
        "secret_access_key": SECRET, "exclude": ["*.png"]})
    deps = make_deps(msgspec.structs.replace(settings, connector_allow_private=f"127.0.0.1:{port}"))

    caplog.set_level(logging.DEBUG)
    first = (await sync_source(deps, tenant.id, source.id)).run
    assert first.status == "succeeded", first.errors
    assert (first.added, first.failed) == (2, 0)
    assert set(await _docs(pool, tenant.id, source.id)) == {"handbook/intro.md", "handbook/safety.txt"}

    second = (await sync_source(deps, tenant.id, source.id)).run
    assert (second.added, second.updated, second.skipped, second.chunks_written) == (0, 0, 2, 0)

    client.put_object(Bucket=name, Key="handbook/safety.txt", Body=b"Wear goggles and gloves when splitting flint.")
    client.delete_object(Bucket=name, Key="handbook/intro.md")
    third = (await sync_source(deps, tenant.id, source.id)).run
    assert (third.updated, third.deleted, third.added) == (1, 1, 0), third
    assert set(await _docs(pool, tenant.id, source.id)) == {"handbook/safety.txt"}

    # A wrong bucket fails the run (nothing deleted); the secret appears nowhere.
    async with tenant_tx(pool, tenant.id) as conn:
        await conn.execute("UPDATE sources SET config = config || '{\"bucket\": \"no-such-bucket\"}' WHERE id = $1",
                           source.id)
    failed = (await sync_source(deps, tenant.id, source.id)).run
    assert failed.status == "failed" and "NoSuchBucket" in failed.errors[0]["error"]
    assert set(await _docs(pool, tenant.id, source.id)) == {"handbook/safety.txt"}
    for run in (first, second, third, failed):
        assert SECRET not in msgspec.json.encode(run).decode()
    assert SECRET not in caplog.text


async def test_s3_endpoint_must_be_allowed(s3_endpoint, pool, make_tenant, make_source, make_deps, settings):
    url, _ = s3_endpoint
    tenant = await make_tenant()
    source = await make_source(tenant.id, "s3", {"bucket": "whatever", "endpoint_url": url})
    run = (await sync_source(make_deps(settings), tenant.id, source.id)).run
    assert run.status == "failed" and "private, loopback or link-local" in run.errors[0]["error"]


async def test_s3_credentials_sealed_at_rest_are_opened_for_the_sync(s3_endpoint, bucket, pool, make_tenant,
                                                                      make_source, make_deps, settings):
    """Stored as the API stores them (sealed with QUARRY_SECRET_KEY): the sync decrypts them to
    build the connector; without the key the run fails with a clear reason, and nothing leaks."""
    from cryptography.fernet import Fernet

    from api.sources.service import stored_config

    url, port = s3_endpoint
    client, name = bucket
    client.put_object(Bucket=name, Key="handbook/sealed.txt", Body=b"Sealed credentials still open the bucket.")
    keyed = msgspec.structs.replace(settings, connector_allow_private=f"127.0.0.1:{port}",
                                    secret_key=Fernet.generate_key().decode())
    config = stored_config("s3", {"bucket": name, "prefix": "handbook/", "endpoint_url": url,
                                  "access_key_id": "AKIATEST", "secret_access_key": SECRET}, keyed)
    assert SECRET not in msgspec.json.encode(config).decode()
    tenant = await make_tenant()
    source = await make_source(tenant.id, "s3", config)
    run = (await sync_source(make_deps(keyed), tenant.id, source.id)).run
    assert run.status == "succeeded", run.errors
    assert run.added == 1
    keyless = msgspec.structs.replace(keyed, secret_key="")
    failed = (await sync_source(make_deps(keyless), tenant.id, source.id)).run
    assert failed.status == "failed" and "QUARRY_SECRET_KEY" in failed.errors[0]["error"]
    assert SECRET not in msgspec.json.encode(failed).decode()
