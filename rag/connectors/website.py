"""Website connector: a same-host crawl from a start URL and/or the URLs of a sitemap.

Rules: robots.txt is fetched first and obeyed (RFC 9309: a 4xx robots.txt allows all, a 5xx
or unreachable one stops the sync); only pages of the start host are fetched, breadth-first
up to `max_depth` links away and `max_pages` pages; requests to the host are spaced by the
politeness delay (robots.txt's Crawl-delay if longer, capped at 60 s); every connection —
redirect hops included — goes through the SSRF guard; each page has a size and a time limit.
Compressed bytes are inflated by a bounded decoder (`rag.connectors.inflate`): only gzip is
accepted as a Content-Encoding, and a gzip sitemap or a gzip-encoded page is stopped at the
size limit, so a gzip bomb fails with a reason instead of filling the worker's memory.

The cursor of a page is its ETag / Last-Modified (sent back as a conditional GET: a 304 is
"unchanged") plus its outgoing links, so the crawl still passes through unchanged pages.
"""

from __future__ import annotations

import asyncio
import html
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit
from urllib.robotparser import RobotFileParser

import httpx
from selectolax.lexbor import LexborHTMLParser

from rag.connectors.base import ConnectorError, Cursor, Fetched, Gone, ItemFailed, ScanResult, Unchanged
from rag.connectors.config import WebsiteConfig
from rag.connectors.globs import matches
from rag.connectors.inflate import GzipInflater, TooLarge, inflate_gzip
from rag.connectors.netguard import BlockedAddress, NetPolicy, guarded_client

__all__ = ["WebsiteConnector", "normalize_url"]

MAX_REDIRECTS = 5
MAX_LINKS_KEPT = 500
MAX_SITEMAPS = 50
MAX_CRAWL_DELAY_S = 60.0
_REDIRECTS = {301, 302, 303, 307, 308}
# httpx would otherwise offer (and inflate, without a bound) deflate, br and zstd too.
_ACCEPT_ENCODING = "gzip"
_GZIP_ENCODINGS = ("gzip", "x-gzip")
_LOC = re.compile(r"<loc>\s*([^<\s]+)\s*</loc>", re.I)


def normalize_url(url: str) -> str | None:
    """Lower-cased scheme and host, no default port, no fragment, "/" for an empty path."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or port == {"http": 80, "https": 443}[scheme] else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


@dataclass
class _Response:
    url: str  # after redirects
    status: int
    headers: httpx.Headers
    body: bytes


class _Refused(Exception):
    """A page we will not fetch (off-host redirect, too large, too many redirects)."""


class WebsiteConnector:
    def __init__(
        self, config: WebsiteConfig, *, policy: NetPolicy, max_item_bytes: int, timeout_s: float, user_agent: str,
    ) -> None:
        self.config = config
        self.policy = policy
        self.max_bytes = min(max_item_bytes, config.max_page_bytes or max_item_bytes)
        self.timeout_s = min(timeout_s, config.timeout_s or timeout_s)
        self.user_agent = user_agent
        self.agent_token = user_agent.split("/", 1)[0].strip() or "*"
        self.complete = False
        self.notes: list[str] = []
        origin = normalize_url(config.start_url or config.sitemap_url or "")
        if origin is None:
            raise ConnectorError("the website source has no valid start_url or sitemap_url")
        self.origin = origin
        self.host = urlsplit(origin).hostname or ""
        self.delay_s = config.delay_s
        self._last_request: dict[str, float] = {}
        self._robots = RobotFileParser()
        self._robots_loaded = False
        self._client: httpx.AsyncClient | None = None

    # --- HTTP ----------------------------------------------------------------------------
    def _same_host(self, url: str) -> bool:
        return (urlsplit(url).hostname or "").lower() == self.host

    async def _polite(self, url: str) -> None:
        netloc = urlsplit(url).netloc
        last = self._last_request.get(netloc)
        if last is not None:
            wait = last + self.delay_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        self._last_request[netloc] = time.monotonic()

    async def _get(self, url: str, headers: dict[str, str] | None = None) -> _Response:
        """GET with redirects followed on this host only, each hop through the guard, the
        body limited to max_bytes, the whole exchange limited to timeout_s."""
        assert self._client is not None
        current = url
        async with asyncio.timeout(self.timeout_s):
            for _ in range(MAX_REDIRECTS + 1):
                await self._polite(current)
                request_headers = {"Accept-Encoding": _ACCEPT_ENCODING, **(headers or {})}
                async with self._client.stream("GET", current, headers=request_headers) as response:
                    if response.status_code in _REDIRECTS and "location" in response.headers:
                        target = normalize_url(urljoin(current, response.headers["location"]))
                        if target is None:
                            raise _Refused(f"redirected to an unsupported location from {current}")
                        if not self._same_host(target):
                            raise _Refused(f"redirected to another host ({urlsplit(target).netloc}); not followed")
                        if self._robots_loaded and not self._allowed(target):
                            raise _Refused(f"redirected to {target}, which robots.txt disallows")
                        current, headers = target, None  # validators belong to the first URL
                        continue
                    body = b""
                    if response.status_code == 200:
                        body = await self._read_limited(response)
                    return _Response(current, response.status_code, response.headers, body)
        raise _Refused(f"more than {MAX_REDIRECTS} redirects")

    async def _read_limited(self, response: httpx.Response) -> bytes:
        """The body, at most max_bytes on the wire and (if gzip-encoded) at most max_bytes inflated."""
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise _Refused(f"the page is larger than {self.max_bytes} bytes ({declared} declared)")
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        inflater: GzipInflater | None = None
        if encoding in _GZIP_ENCODINGS:
            inflater = GzipInflater(self.max_bytes)
        elif encoding not in ("", "identity"):
            raise _Refused(f"unsupported Content-Encoding {encoding[:40]!r} (only gzip is accepted)")
        chunks, size = [], 0
        try:
            async for chunk in response.aiter_raw():  # raw: inflated here, under the limit
                size += len(chunk)
                if size > self.max_bytes:
                    raise _Refused(f"the page is larger than {self.max_bytes} bytes")
                chunks.append(inflater.feed(chunk) if inflater is not None else chunk)
            if inflater is not None:
                inflater.finish()
        except TooLarge:
            raise _Refused(f"the gzip-encoded page inflates to more than {self.max_bytes:,} bytes "
                           "(a gzip bomb?)") from None
        except ValueError as exc:
            raise _Refused(f"the gzip-encoded page is corrupt ({exc})") from None
        return b"".join(chunks)

    # --- robots.txt and sitemaps ---------------------------------------------------------
    async def _load_robots(self) -> None:
        parts = urlsplit(self.origin)
        url = urlunsplit((parts.scheme, parts.netloc, "/robots.txt", "", ""))
        try:
            response = await self._get(url)
        except (httpx.HTTPError, TimeoutError, _Refused) as exc:
            raise ConnectorError(f"robots.txt could not be fetched ({_describe(exc)}); "
                                 "not crawling without it") from None
        if response.status >= 500:
            raise ConnectorError(f"robots.txt answered HTTP {response.status}; not crawling without it")
        lines = response.body.decode("utf-8", "replace").splitlines() if response.status == 200 else []
        self._robots.parse(lines)  # no rules (4xx, empty): everything is allowed
        self._robots_loaded = True
        crawl_delay = self._robots.crawl_delay(self.agent_token)
        if crawl_delay:
            self.delay_s = max(self.delay_s, min(float(crawl_delay), MAX_CRAWL_DELAY_S))

    def _wanted(self, url: str) -> bool:
        return matches(urlsplit(url).path or "/", self.config.include, self.config.exclude)

    def _allowed(self, url: str) -> bool:
        return self._robots.can_fetch(self.agent_token, url)

    async def _sitemap_urls(self, url: str) -> list[str]:
        pending, seen, found = deque([url]), set[str](), list[str]()
        while pending and len(seen) < MAX_SITEMAPS:
            current = pending.popleft()
            if current in seen:
                continue
            seen.add(current)
            try:
                response = await self._get(current)
            except (httpx.HTTPError, TimeoutError, _Refused) as exc:
                raise ConnectorError(f"the sitemap {current} could not be fetched ({_describe(exc)})") from None
            if response.status != 200:
                raise ConnectorError(f"the sitemap {current} answered HTTP {response.status}")
            body = response.body
            if body[:2] == b"\x1f\x8b":
                try:
                    body = inflate_gzip(body, self.max_bytes)
                except TooLarge as exc:
                    raise ConnectorError(f"the gzip sitemap {current} is refused: {exc}") from None
                except ValueError as exc:
                    raise ConnectorError(f"the gzip sitemap {current} is corrupt ({exc})") from None
            text = body.decode("utf-8", "replace")
            locs = [normalize_url(html.unescape(loc)) for loc in _LOC.findall(text)]
            for loc in locs:
                if loc is None:
                    continue
                if not self._same_host(loc):
                    self.notes.append(f"sitemap entry on another host skipped: {loc}")
                elif "<sitemapindex" in text[:2000].lower():
                    pending.append(loc)
                else:
                    found.append(loc)
        return list(dict.fromkeys(found))

    # --- pages ---------------------------------------------------------------------------
    def _links(self, base: str, body: bytes) -> list[str]:
        tree = LexborHTMLParser(body.decode("utf-8", "replace"))
        for meta in tree.css("meta[name=robots]"):
            if "nofollow" in (meta.attributes.get("content") or "").lower():
                return []
        links = []
        for anchor in tree.css("a[href]"):
            if "nofollow" in (anchor.attributes.get("rel") or "").lower():
                continue
            url = normalize_url(urljoin(base, anchor.attributes.get("href") or ""))
            if url is not None:
                links.append(url)
        return list(dict.fromkeys(links))[:MAX_LINKS_KEPT]

    async def _page(self, url: str, cursor: Cursor | None) -> tuple[ScanResult, list[str]]:
        headers = {}
        if cursor:
            if cursor.get("etag"):
                headers["If-None-Match"] = str(cursor["etag"])
            if cursor.get("last_modified"):
                headers["If-Modified-Since"] = str(cursor["last_modified"])
        try:
            response = await self._get(url, headers)
        except TimeoutError:
            return ItemFailed(url, f"the page took longer than {self.timeout_s:g} s"), []
        except BlockedAddress as exc:
            return ItemFailed(url, str(exc)), []
        except _Refused as exc:
            return ItemFailed(url, str(exc)), []
        except httpx.HTTPError as exc:
            return ItemFailed(url, _describe(exc)), []
        if response.status == 304 and cursor is not None:
            return Unchanged(url), list(cursor.get("links") or [])
        if response.status in (404, 410):
            return Gone(url), []
        if response.status != 200:
            return ItemFailed(url, f"HTTP {response.status}"), []
        content_type = response.headers.get("content-type")
        is_html = (content_type or "").split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml")
        links = self._links(response.url, response.body) if is_html else []
        new_cursor: Cursor = {"etag": response.headers.get("etag"),
                              "last_modified": response.headers.get("last-modified"), "links": links}
        name = urlsplit(response.url).path.rsplit("/", 1)[-1] or None
        return Fetched(url, response.body, new_cursor, filename=name, content_type=content_type,
                       metadata={"url": response.url}), links

    async def scan(self, known: Mapping[str, Cursor]) -> AsyncIterator[ScanResult]:
        async with guarded_client(self.policy, timeout_s=self.timeout_s, user_agent=self.user_agent) as client:
            self._client = client
            await self._load_robots()
            queue: deque[tuple[str, int]] = deque()
            if self.config.sitemap_url:
                queue.extend((u, 0) for u in await self._sitemap_urls(normalize_url(self.config.sitemap_url) or ""))
            if self.config.start_url:
                queue.appendleft((self.origin, 0))
            visited: set[str] = set()
            pages, truncated = 0, False
            while queue:
                url, depth = queue.popleft()
                if url in visited:
                    continue
                visited.add(url)
                if not self._same_host(url) or not self._allowed(url):
                    continue
                wanted = self._wanted(url)
                if not wanted and url != self.origin:
                    continue  # outside include/exclude: not fetched (the start page still is, for its links)
                if pages >= self.config.max_pages:
                    truncated = True
                    break
                pages += 1
                result, links = await self._page(url, known.get(url))
                if wanted:
                    yield result
                if depth < self.config.max_depth:
                    queue.extend((link, depth + 1) for link in links if link not in visited and self._same_host(link))
            self._client = None
        if truncated:
            self.notes.append(f"stopped at max_pages={self.config.max_pages}: pages not visited are kept, "
                              "nothing was deleted")
        self.complete = not truncated


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text[:300]
