"""S3 sync against moto's S3-compatible server on 127.0.0.1: add, unchanged (ETag), update,
delete; credentials never leak into run errors or logs."""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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


class _Recorder:
    """A minimal S3 look-alike on 127.0.0.1 that records every request's headers and closes
    each connection (so every request is a new connection: a re-resolving client would show)."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects, self.requests = objects, []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                recorder.requests.append((self.path, dict(self.headers.items())))
                path, _, query = self.path.partition("?")
                parts = path.strip("/").split("/", 1)
                if len(parts) == 1 and "list-type=2" in query:
                    body = _listing(parts[0], recorder.objects).encode()
                    self._answer(200, body, "application/xml")
                elif len(parts) == 2 and parts[1] in recorder.objects:
                    self._answer(200, recorder.objects[parts[1]], "text/plain", etag=_etag(recorder.objects[parts[1]]))
                else:
                    self._answer(404, b"<Error><Code>NoSuchKey</Code><Message>no</Message></Error>", "application/xml")

            def _answer(self, status: int, body: bytes, content_type: str, etag: str | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                if etag:
                    self.send_header("ETag", etag)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Recorder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _etag(data: bytes) -> str:
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'


def _listing(bucket: str, objects: dict[str, bytes]) -> str:
    contents = "".join(
        f"<Contents><Key>{key}</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>{_etag(data)}</ETag>"
        f"<Size>{len(data)}</Size><StorageClass>STANDARD</StorageClass></Contents>" for key, data in objects.items())
    return ('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>{bucket}</Name><Prefix></Prefix><KeyCount>{len(objects)}</KeyCount><MaxKeys>1000</MaxKeys>"
            f"<IsTruncated>false</IsTruncated>{contents}</ListBucketResult>")


PLATFORM_KEY, PLATFORM_SECRET, PLATFORM_TOKEN = "AKIAPLATFORMKEY00001", "platform-secret-never-sent", "platform-token"


@pytest.fixture
def platform_credentials(monkeypatch, tmp_path):
    """The platform's own AWS identity, everywhere botocore would look for it, plus an endpoint
    override pointing at a trap: a tenant's source must use none of it."""
    trap = _Recorder({"trap.txt": b"trap"})
    with trap:
        (tmp_path / "config").write_text(
            f"[default]\nregion = eu-west-1\nendpoint_url = http://127.0.0.1:{trap.port}\n"
            f"[profile platform]\naws_access_key_id = {PLATFORM_KEY}\naws_secret_access_key = {PLATFORM_SECRET}\n"
            f"endpoint_url = http://127.0.0.1:{trap.port}\n")
        (tmp_path / "credentials").write_text(
            f"[default]\naws_access_key_id = {PLATFORM_KEY}\naws_secret_access_key = {PLATFORM_SECRET}\n"
            f"[platform]\naws_access_key_id = {PLATFORM_KEY}\naws_secret_access_key = {PLATFORM_SECRET}\n")
        for name, value in {
            "AWS_ACCESS_KEY_ID": PLATFORM_KEY, "AWS_SECRET_ACCESS_KEY": PLATFORM_SECRET,
            "AWS_SESSION_TOKEN": PLATFORM_TOKEN, "AWS_PROFILE": "platform", "AWS_DEFAULT_PROFILE": "platform",
            "AWS_CONFIG_FILE": str(tmp_path / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{trap.port}", "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{trap.port}",
            "AWS_CA_BUNDLE": str(tmp_path / "no-such-bundle.pem"), "REQUESTS_CA_BUNDLE": str(tmp_path / "nope.pem"),
            "HTTP_PROXY": f"http://127.0.0.1:{trap.port}", "http_proxy": f"http://127.0.0.1:{trap.port}",
        }.items():
            monkeypatch.setenv(name, value)
        yield trap


def _leaks(headers: dict[str, str]) -> list[str]:
    text = " ".join(f"{k}: {v}" for k, v in headers.items())
    return [s for s in (PLATFORM_KEY, PLATFORM_SECRET, PLATFORM_TOKEN) if s in text]


async def test_keyless_source_is_unsigned_and_uses_nothing_of_the_platform(
    platform_credentials, pool, make_tenant, make_source, make_deps, settings
):
    with _Recorder({"guide.txt": b"Obsidian is volcanic glass.", "more.txt": b"Pumice is frothy."}) as s3:
        tenant = await make_tenant()
        source = await make_source(tenant.id, "s3", {"bucket": "public-docs", "endpoint_url": f"http://127.0.0.1:{s3.port}"})
        deps = make_deps(msgspec.structs.replace(settings, connector_allow_private=f"127.0.0.1:{s3.port}"))
        run = (await sync_source(deps, tenant.id, source.id)).run
        assert run.status == "succeeded" and run.added == 2, run.errors
        assert len(s3.requests) == 3  # one listing, two downloads
        for path, headers in s3.requests:
            signing = {"authorization", "x-amz-security-token", "x-amz-date", "x-amz-content-sha256"}
            assert not {k.lower() for k in headers} & signing, headers
            assert not _leaks(headers), (path, headers)
        # Signed with the tenant's own keys when it has some — never the platform's.
        signed = await make_source(tenant.id, "s3", {
            "bucket": "private-docs", "endpoint_url": f"http://127.0.0.1:{s3.port}",
            "access_key_id": "AKIATENANTKEY0000001", "secret_access_key": "tenant-secret-0123456789"})
        s3.requests.clear()
        run = (await sync_source(deps, tenant.id, signed.id)).run
        assert run.status == "succeeded", run.errors
        for _, headers in s3.requests:
            assert "Credential=AKIATENANTKEY0000001/" in headers["Authorization"] and not _leaks(headers)
    assert platform_credentials.requests == []  # neither the endpoint override nor the proxy was used


async def test_endpoint_address_is_pinned_against_dns_rebinding(
    monkeypatch, pool, make_tenant, make_source, make_deps, settings
):
    real_getaddrinfo = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding(host, port, *args, **kwargs):
        if str(host).endswith(".rebind.test"):
            lookups.append(host)  # first answer: the allowed address; afterwards: a private one
            address = "127.0.0.1" if len(lookups) == 1 else "10.66.0.1"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with _Recorder({f"doc-{i}.txt": f"Document {i} about gabbro.".encode() for i in range(3)}) as s3:
        tenant = await make_tenant()
        source = await make_source(tenant.id, "s3", {"bucket": "docs", "endpoint_url": f"http://s3.rebind.test:{s3.port}"})
        deps = make_deps(msgspec.structs.replace(settings, connector_allow_private=f"127.0.0.1:{s3.port}"))
        run = (await sync_source(deps, tenant.id, source.id)).run
        assert run.status == "succeeded" and run.added == 3, run.errors
        assert lookups == ["s3.rebind.test"]  # resolved once; four connections went to the checked address
        assert len(s3.requests) == 4 and all(h["Host"] == f"s3.rebind.test:{s3.port}" for _, h in s3.requests)

        # An endpoint whose name resolves to a non-allowed address is refused before any request.
        lookups.append("burn the allowed first answer")
        s3.requests.clear()
        run = (await sync_source(deps, tenant.id, source.id)).run
        assert run.status == "failed" and "non-public address 10.66.0.1" in run.errors[0]["error"], run.errors
        assert s3.requests == []


def test_isolated_session_sees_no_platform_configuration(platform_credentials):
    from rag.connectors.s3 import isolated_session

    session = isolated_session()
    assert session.get_credentials() is None
    assert session.get_config_variable("profile") is None
    assert session.get_config_variable("region") is None
    assert session.get_config_variable("ca_bundle") is None
    assert session.get_scoped_config() == {}


async def test_aws_hosts_are_checked_too(monkeypatch, pool, make_tenant, make_source, make_deps, settings):
    """Without endpoint_url botocore picks the host (bucket, region, redirects): each one is
    resolved once and checked before any connection."""
    real_getaddrinfo = socket.getaddrinfo
    lookups: list[str] = []

    def poisoned(host, port, *args, **kwargs):
        if str(host).endswith(".amazonaws.com"):
            lookups.append(host)
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("64:ff9b::a9fe:a9fe", port, 0, 0))]
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", poisoned)
    tenant = await make_tenant()
    source = await make_source(tenant.id, "s3", {"bucket": "some-public-bucket", "region": "eu-west-1"})
    run = (await sync_source(make_deps(settings), tenant.id, source.id)).run
    assert run.status == "failed" and "non-public address 64:ff9b::a9fe:a9fe" in run.errors[0]["error"], run.errors
    assert lookups and len(set(lookups)) == len(lookups)  # each host resolved once, retries included


async def test_s3_listing_is_bounded(monkeypatch, pool, make_tenant, make_source, make_deps, settings):
    from rag.connectors import s3 as s3_connector

    monkeypatch.setattr(s3_connector, "MAX_OBJECTS", 2)
    with _Recorder({f"doc-{i}.txt": f"Document {i} about tuff.".encode() for i in range(3)}) as s3:
        tenant = await make_tenant()
        source = await make_source(tenant.id, "s3", {"bucket": "docs", "endpoint_url": f"http://127.0.0.1:{s3.port}"})
        deps = make_deps(msgspec.structs.replace(settings, connector_allow_private=f"127.0.0.1:{s3.port}"))
        run = (await sync_source(deps, tenant.id, source.id)).run
    assert run.status == "succeeded" and run.added == 2 and run.complete is False and run.deleted == 0
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
    tenant = await make_tenant()
    config = stored_config("s3", {"bucket": name, "prefix": "handbook/", "endpoint_url": url,
                                  "access_key_id": "AKIATEST", "secret_access_key": SECRET}, keyed, tenant.id)
    assert SECRET not in msgspec.json.encode(config).decode()
    source = await make_source(tenant.id, "s3", config)
    run = (await sync_source(make_deps(keyed), tenant.id, source.id)).run
    assert run.status == "succeeded", run.errors
    assert run.added == 1
    keyless = msgspec.structs.replace(keyed, secret_key="")
    failed = (await sync_source(make_deps(keyless), tenant.id, source.id)).run
    assert failed.status == "failed" and "QUARRY_SECRET_KEY" in failed.errors[0]["error"]
    assert SECRET not in msgspec.json.encode(failed).decode()
