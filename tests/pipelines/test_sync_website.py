"""Website sync against a local HTTP server: sitemap, robots.txt, redirects, 404s, a huge
page, a slow page, links to private addresses, ETag revalidation, politeness delay."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import msgspec
import pytest

from pipelines.sync import sync_source
from rag.connectors import NetPolicy
from rag.connectors.netguard import BlockedAddress, resolve_checked
from storage.tenancy import tenant_tx


class Site:
    """A tiny website on 127.0.0.1 whose pages tests can change."""

    def __init__(self) -> None:
        self.pages: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.log: list[tuple[float, str, dict[str, str]]] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.log.append((time.monotonic(), self.path, {k.lower(): v for k, v in self.headers.items()}))
                if self.path == "/slow":
                    time.sleep(2.5)
                status, headers, body = site.pages.get(self.path, (404, {}, b"not found"))
                etag = headers.get("ETag")
                if etag and self.headers.get("If-None-Match") == etag:
                    status, body = 304, b""
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def html(self, path: str, title: str, body: str, etag: str | None = None) -> None:
        headers = {"Content-Type": "text/html; charset=utf-8"}
        if etag:
            headers["ETag"] = etag
        page = f"<html><head><title>{title}</title></head><body>{body}</body></html>"
        self.pages[path] = (200, headers, page.encode())

    def requests_to(self, path: str) -> list[dict[str, str]]:
        return [h for _, p, h in self.log if p == path]


@pytest.fixture
def site():
    s = Site()
    s.thread.start()
    yield s
    s.server.shutdown()
    s.server.server_close()


def _build(site: Site) -> None:
    b = site.base
    site.pages["/robots.txt"] = (200, {"Content-Type": "text/plain"}, b"User-agent: *\nDisallow: /private/\n")
    site.pages["/sitemap.xml"] = (200, {"Content-Type": "application/xml"}, f"""<?xml version="1.0"?>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
<url><loc>{b}/</loc></url><url><loc>{b}/granite.html</loc></url><url><loc>{b}/old-basalt</loc></url>
<url><loc>{b}/missing.html</loc></url><url><loc>{b}/huge.html</loc></url><url><loc>{b}/slow</loc></url>
<url><loc>{b}/private/secret.html</loc></url><url><loc>{b}/to-metadata</loc></url>
<url><loc>http://10.0.0.1/internal.html</loc></url>
</urlset>""".encode())
    site.html("/", "Rocks", 'Welcome to rocks. <a href="/granite.html">granite</a> <a href="/chalk.html">chalk</a>'
                            ' <a href="http://169.254.169.254/latest/meta-data/">metadata</a>'
                            ' <a href="http://10.0.0.1/admin">admin</a>')
    site.html("/granite.html", "Granite", "Granite is an igneous rock rich in quartz and feldspar.", etag='"g1"')
    site.pages["/old-basalt"] = (301, {"Location": "/basalt.html"}, b"")
    site.html("/basalt.html", "Basalt", "Basalt is a fine-grained volcanic rock.")
    site.html("/chalk.html", "Chalk", "Chalk is a soft limestone made of coccoliths.")
    site.html("/private/secret.html", "Secret", "must never be fetched")
    huge = b"<html><body>" + b"x" * 300_000 + b"</body></html>"
    site.pages["/huge.html"] = (200, {"Content-Type": "text/html"}, huge)
    site.html("/slow", "Slow", "too slow")
    site.pages["/to-metadata"] = (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b"")


@pytest.fixture
def web_settings(settings, site):
    return msgspec.structs.replace(settings, connector_allow_private=f"127.0.0.1:{site.port}",
                                   connector_timeout_s=1.0)


async def _uris(pool, tenant_id, source_id):
    async with tenant_tx(pool, tenant_id, readonly=True) as conn:
        rows = await conn.fetch("SELECT uri, title FROM documents WHERE source_id = $1 AND status = 'ready'", source_id)
    return {r["uri"]: r["title"] for r in rows}


async def test_website_sync(site, pool, make_tenant, make_source, make_deps, web_settings):
    _build(site)
    b = site.base
    tenant = await make_tenant()
    source = await make_source(tenant.id, "website", {
        "start_url": f"{b}/", "sitemap_url": f"{b}/sitemap.xml", "max_depth": 1, "max_pages": 50,
        "delay_s": 0.2, "max_page_bytes": 100_000})
    deps = make_deps(web_settings)

    first = await sync_source(deps, tenant.id, source.id)
    run = first.run
    assert run.status == "succeeded", run.errors
    docs = await _uris(pool, tenant.id, source.id)
    assert set(docs) == {f"{b}/", f"{b}/granite.html", f"{b}/old-basalt", f"{b}/chalk.html"}
    assert docs[f"{b}/granite.html"] == "Granite" and docs[f"{b}/old-basalt"] == "Basalt"
    assert run.added == 4
    errors = {e["uri"]: e["error"] for e in run.errors}
    assert "larger than 100000 bytes" in errors[f"{b}/huge.html"]
    assert "longer than 1 s" in errors[f"{b}/slow"]
    assert "another host" in errors[f"{b}/to-metadata"]
    assert run.failed == 3
    assert not site.requests_to("/private/secret.html")  # robots.txt obeyed
    assert site.requests_to("/robots.txt")
    assert any("10.0.0.1" in note for note in first.notes)  # off-host sitemap entry skipped

    # Politeness: requests to the host are spaced by the delay (the server saw them in order).
    stamps = [t for t, _, _ in site.log]
    gaps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    assert min(gaps) >= 0.12, gaps  # 0.2 s asked; arrival times jitter a little

    # Second run: an ETag revalidation (304) skips granite; chalk is gone (404) and deleted.
    site.log.clear()
    del site.pages["/chalk.html"]
    site.html("/", "Rocks", 'Welcome to rocks, now without chalk. <a href="/granite.html">granite</a>')
    second = (await sync_source(deps, tenant.id, source.id)).run
    assert site.requests_to("/granite.html")[0].get("if-none-match") == '"g1"'
    assert (second.updated, second.deleted) == (1, 1), second
    assert second.skipped >= 2  # granite (304) and basalt (same bytes)
    assert set(await _uris(pool, tenant.id, source.id)) == {f"{b}/", f"{b}/granite.html", f"{b}/old-basalt"}


async def test_page_limit_deletes_nothing(site, pool, make_tenant, make_source, make_deps, web_settings):
    _build(site)
    tenant = await make_tenant()
    source = await make_source(tenant.id, "website", {"start_url": f"{site.base}/", "max_pages": 2, "delay_s": 0})
    deps = make_deps(web_settings)
    assert (await sync_source(deps, tenant.id, source.id)).run.added == 2
    report = await sync_source(deps, tenant.id, source.id)
    assert report.run.complete is False and report.run.deleted == 0
    assert any("max_pages" in note for note in report.notes)


async def test_unreachable_robots_stops_the_sync(site, pool, make_tenant, make_source, make_deps, web_settings):
    _build(site)
    site.pages["/robots.txt"] = (503, {}, b"down")
    tenant = await make_tenant()
    source = await make_source(tenant.id, "website", {"start_url": f"{site.base}/", "delay_s": 0})
    run = (await sync_source(make_deps(web_settings), tenant.id, source.id)).run
    assert run.status == "failed" and "robots.txt" in run.errors[0]["error"]
    assert not site.requests_to("/")


@pytest.mark.parametrize("url", ["http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/",
                                 "http://[::ffff:10.0.0.1]/", "http://127.0.0.1:{other}/"])
async def test_private_start_refused_at_fetch_time(site, pool, make_tenant, make_source, make_deps, web_settings, url):
    """A source saved before the operator narrowed the allow-list is refused at sync time (and
    no_outbound proves no connection was even attempted)."""
    tenant = await make_tenant()
    source = await make_source(tenant.id, "website", {"start_url": url.format(other=site.port + 1), "delay_s": 0})
    run = (await sync_source(make_deps(web_settings), tenant.id, source.id)).run
    assert run.status == "failed"
    assert "private, loopback or link-local" in run.errors[0]["error"], run.errors


async def test_names_resolving_to_private_addresses_are_refused(
    site, pool, make_tenant, make_source, make_deps, web_settings, monkeypatch
):
    """DNS is checked at connect time, every address: one private address among public ones
    is enough to refuse (a rebinding name cannot slip through)."""
    original = asyncio.BaseEventLoop.getaddrinfo

    async def fake_getaddrinfo(self, host, port, *args, **kwargs):
        if host == "intranet.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", port))]
        return await original(self, host, port, *args, **kwargs)

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", fake_getaddrinfo)
    tenant = await make_tenant()
    source = await make_source(tenant.id, "website", {"start_url": "http://intranet.example/", "delay_s": 0})
    run = (await sync_source(make_deps(web_settings), tenant.id, source.id)).run
    assert run.status == "failed"
    assert "non-public address 10.0.0.1" in run.errors[0]["error"], run.errors


@pytest.mark.parametrize(("address", "public"), [
    ("10.0.0.1", False), ("172.16.5.4", False), ("192.168.1.1", False), ("127.0.0.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("::1", False),
    ("fe80::1", False), ("fd00::1", False), ("::ffff:10.0.0.1", False), ("224.0.0.1", False),
    ("8.8.8.8", True), ("2606:4700:4700::1111", True),
])
def test_net_policy_default(address, public):
    assert NetPolicy("").permits(ipaddress.ip_address(address), "h", 80) is public


def test_net_policy_allow_list():
    policy = NetPolicy("127.0.0.1:8080, 10.1.0.0/16, minio.internal:9000")
    ip = ipaddress.ip_address
    assert policy.permits(ip("127.0.0.1"), "127.0.0.1", 8080)
    assert not policy.permits(ip("127.0.0.1"), "127.0.0.1", 8081)
    assert policy.permits(ip("10.1.2.3"), "x", 1) and not policy.permits(ip("10.2.0.1"), "x", 1)
    assert policy.permits(ip("10.9.9.9"), "minio.internal", 9000)
    assert NetPolicy("*").permits(ip("169.254.169.254"), "x", 80)
    with pytest.raises(ValueError, match="ALLOW_PRIVATE"):
        NetPolicy("not an entry")


async def test_resolution_checks_every_address():
    with pytest.raises(BlockedAddress, match=r"127\.0\.0\.1|::1"):
        await resolve_checked("localhost", 80, NetPolicy(""))
    assert await resolve_checked("localhost", 80, NetPolicy("127.0.0.0/8, ::1/128"))


async def test_include_exclude_on_url_paths(site, pool, make_tenant, make_source, make_deps, web_settings):
    _build(site)
    site.html("/", "Rocks", '<a href="/docs/granite.html">g</a> <a href="/docs/drafts/x.html">x</a>'
                            ' <a href="/blog.html">b</a>')
    site.html("/docs/granite.html", "Granite", "Granite is coarse-grained.")
    site.html("/docs/drafts/x.html", "Draft", "A draft page.")
    site.html("/blog.html", "Blog", "Not documentation.")
    tenant = await make_tenant()
    source = await make_source(tenant.id, "website", {"start_url": f"{site.base}/", "delay_s": 0,
                                                      "include": ["/docs/**"], "exclude": ["/docs/drafts/**"]})
    run = (await sync_source(make_deps(web_settings), tenant.id, source.id)).run
    assert set(await _uris(pool, tenant.id, source.id)) == {f"{site.base}/docs/granite.html"}, run
    assert not site.requests_to("/blog.html") and not site.requests_to("/docs/drafts/x.html")
