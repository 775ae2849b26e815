"""Decompression bombs: DOCX zip bombs (big, lying, many entries, huge directory, nested) and
gzip bombs (a sitemap, a gzip-encoded page) are refused with a clear reason after inflating at
most about the cap, never gigabytes."""

from __future__ import annotations

import asyncio
import gzip
import io
import struct
import subprocess
import sys
import textwrap
import threading
import zipfile
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import docx
import pypdf
import pytest
from fpdf import FPDF

import rag.parsing.pdf
from core.errors import Unprocessable
from rag.connectors import NetPolicy
from rag.connectors.base import ConnectorError, Fetched, ItemFailed
from rag.connectors.config import WebsiteConfig
from rag.connectors.inflate import GzipInflater, TooLarge, inflate_gzip
from rag.connectors.website import WebsiteConnector
from rag.parsing import ParseError, parse_file
from rag.parsing.archive import MAX_ENTRIES, MAX_PART_BYTES, MAX_TOTAL_BYTES, ArchiveTooLarge, read_parts
from rag.validation import check_upload

MB = 1024 * 1024


# --- building archives byte by byte (so the directory can say what we want) ---------------

def zeros_deflated(megabytes: int) -> bytes:
    """Raw deflate of `megabytes` MB of zeros, built from one flushed 1 MB block repeated
    (each block is identical after a full flush), so a 1 GB bomb costs milliseconds to make."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(b"\0" * MB) + compressor.flush(zlib.Z_FULL_FLUSH)
    return block * megabytes + compressor.flush()


def zeros_crc(megabytes: int) -> int:
    crc, block = 0, b"\0" * MB
    for _ in range(megabytes):
        crc = zlib.crc32(block, crc)
    return crc


class Entry:
    def __init__(self, name: str, payload: bytes, *, crc: int, size: int, deflated: bool = True) -> None:
        self.name, self.payload, self.crc, self.size, self.deflated = name.encode(), payload, crc, size, deflated

    @classmethod
    def of(cls, name: str, data: bytes) -> Entry:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        return cls(name, compressor.compress(data) + compressor.flush(), crc=zlib.crc32(data), size=len(data))


def build_zip(entries: list[Entry]) -> bytes:
    out, directory = bytearray(), bytearray()
    for e in entries:
        method = 8 if e.deflated else 0
        offset = len(out)
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0, e.crc, len(e.payload), e.size,
                           len(e.name), 0) + e.name + e.payload
        directory += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0, e.crc, len(e.payload),
                                 e.size, len(e.name), 0, 0, 0, 0, 0, offset) + e.name
    start = len(out)
    out += directory
    out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(directory), start, 0)
    return bytes(out)


def docx_entries(text: str = "Granite is an igneous rock.") -> list[Entry]:
    document = docx.Document()
    document.add_paragraph(text)
    buffer = io.BytesIO()
    document.save(buffer)
    with zipfile.ZipFile(buffer) as archive:
        return [Entry.of(info.filename, archive.read(info)) for info in archive.infolist()]


@pytest.fixture
def write(tmp_path: Path):
    def write(name: str, data: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path
    return write


def refused_both_ways(path: Path, match: str) -> None:
    """The upload check (API, directory only) and the parser (worker) both refuse it."""
    with pytest.raises(Unprocessable, match=match):
        check_upload(path, "docx", path.stat().st_size)
    with pytest.raises(ParseError, match=match):
        parse_file(path, "docx")


# --- DOCX ------------------------------------------------------------------------------------

def test_the_caps_are_far_below_the_old_512_mb() -> None:
    assert MAX_PART_BYTES <= 64 * MB and MAX_TOTAL_BYTES <= 128 * MB and MAX_ENTRIES <= 5000


def test_a_real_docx_still_parses(write) -> None:
    path = write("ok.docx", build_zip(docx_entries()))
    check_upload(path, "docx", path.stat().st_size)
    assert "Granite is an igneous rock." in parse_file(path, "docx").sections[0].text


def test_one_part_that_inflates_past_the_part_cap(write) -> None:
    megabytes = MAX_PART_BYTES // MB + 1
    bomb = Entry("word/media/image1.png", zeros_deflated(megabytes), crc=zeros_crc(megabytes), size=megabytes * MB)
    path = write("bomb.docx", build_zip([*docx_entries(), bomb]))
    assert path.stat().st_size < 200_000  # 65 MB of zeros in a few KB
    refused_both_ways(path, r"image1\.png' inflates to .* at most .* per part \(a zip bomb\?\)")


def test_parts_that_together_inflate_past_the_total_cap(write) -> None:
    megabytes = MAX_TOTAL_BYTES // MB // 3 + 1
    payload, crc = zeros_deflated(megabytes), zeros_crc(megabytes)
    parts = [Entry(f"word/media/image{i}.png", payload, crc=crc, size=megabytes * MB) for i in range(3)]
    refused_both_ways(write("many.docx", build_zip([*docx_entries(), *parts])), r"more than .* bytes in all")


def test_too_many_entries(write) -> None:
    padding = [Entry.of(f"customXml/item{i}.xml", b"<a/>") for i in range(MAX_ENTRIES + 1)]
    refused_both_ways(write("entries.docx", build_zip([*docx_entries(), *padding])),
                      f"more than {MAX_ENTRIES:,} entries")


def test_a_huge_central_directory_is_refused_before_it_is_parsed(write) -> None:
    # 60,000 entries: zipfile would build 60,000 objects before anyone could count them.
    padding = [Entry(f"customXml/padding-entry-number-{i:06d}.xml", b"", crc=0, size=0, deflated=False)
               for i in range(60_000)]
    refused_both_ways(write("directory.docx", build_zip([*docx_entries(), *padding])), "ZIP directory is")


def test_a_directory_that_lies_about_sizes_is_still_bounded(write, tmp_path: Path) -> None:
    """Declared 1 KB, really 1 GB: parsing fails with a reason, and the process never holds
    anything near the real size (checked in a subprocess, by its peak resident memory)."""
    megabytes = 1024
    liar = Entry("word/media/image1.png", zeros_deflated(megabytes), crc=zeros_crc(megabytes), size=1024)
    path = write("liar.docx", build_zip([*docx_entries(), liar]))
    check_upload(path, "docx", path.stat().st_size)  # the directory looks innocent: only the parser can tell
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from rag.parsing import ParseError, parse_file
        try:
            parse_file(Path({str(path)!r}), "docx")
        except ParseError as exc:
            print("refused:", exc.detail)
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (the test
        # process, GBs into a full run), while VmHWM belongs to this process's own memory map.
        status = Path("/proc/self/status").read_text()
        peak_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
        print("peak_mb:", peak_kb // 1024)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True,
                          cwd=Path(__file__).parents[2])
    lines = dict(line.split(": ", 1) for line in done.stdout.strip().splitlines())
    assert "DOCX file" in lines["refused"]
    assert int(lines["peak_mb"]) < 400  # 1024 MB of zeros were never inflated at once


def test_read_parts_counts_what_really_comes_out() -> None:
    """The reading cap does not trust zipfile: an archive object whose member yields more than
    its directory declares is stopped at the cap."""

    class LyingArchive:
        def infolist(self) -> list[zipfile.ZipInfo]:
            info = zipfile.ZipInfo("word/document.xml")
            info.file_size = 10
            return [info]

        def open(self, info: zipfile.ZipInfo) -> io.BytesIO:
            return io.BytesIO(b"x" * (3 * MB))

    with pytest.raises(ArchiveTooLarge, match="more than its directory declares"):
        read_parts(LyingArchive(), max_part_bytes=MB)  # type: ignore[arg-type]
    with pytest.raises(ArchiveTooLarge, match="in all"):
        read_parts(LyingArchive(), max_part_bytes=4 * MB, max_total_bytes=2 * MB)  # type: ignore[arg-type]


def test_a_nested_archive_is_never_opened(write) -> None:
    """A zip bomb embedded as a part is only its own (small) compressed bytes: the document parses."""
    inner = build_zip([Entry("zeros.bin", zeros_deflated(512), crc=zeros_crc(512), size=512 * MB)])
    nested = Entry.of("word/embeddings/oleObject1.bin", inner)
    path = write("nested.docx", build_zip([*docx_entries("Basalt is volcanic."), nested]))
    check_upload(path, "docx", path.stat().st_size)
    assert "Basalt is volcanic." in parse_file(path, "docx").sections[0].text


# --- PDF -------------------------------------------------------------------------------------

def test_pypdf_is_a_release_with_the_known_dos_fixes() -> None:
    from importlib.metadata import version
    major, minor, patch = (int(x) for x in version("pypdf").split(".")[:3])
    assert (major, minor, patch) >= (7, 1, 1)
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert '"pypdf>=7.1.1,<8"' in pyproject


def test_pdf_text_is_capped_while_extracting(write, monkeypatch: pytest.MonkeyPatch) -> None:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for word in ("granite", "basalt", "obsidian", "pumice"):
        pdf.add_page()
        pdf.multi_cell(0, 8, (word + " ") * 20)
    path = write("long.pdf", bytes(pdf.output()))
    extracted: list[int] = []
    original = pypdf.PageObject.extract_text

    def counting(self: pypdf.PageObject, *args: object, **kwargs: object) -> str:
        extracted.append(1)
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pypdf.PageObject, "extract_text", counting)
    monkeypatch.setattr(rag.parsing.pdf, "MAX_TEXT_CHARS", 250)  # a page holds ~150 characters
    with pytest.raises(ParseError, match=r"more than 250 characters of text \(reached on page 2 of 4\)"):
        parse_file(path, "pdf")
    assert len(extracted) == 2  # pages 3 and 4 were never extracted


def test_pdf_parsing_never_calls_jbig2dec() -> None:
    seen: list[object] = []
    with pypdf.apply_configuration(**rag.parsing.pdf.PDF_LIMITS):
        seen.append(pypdf.get_configuration().jbig2dec_binary)
    assert seen == [None]


# --- gzip ------------------------------------------------------------------------------------

def gzip_bomb(megabytes: int) -> bytes:
    """A gzip member of `megabytes` MB of zeros (header + raw deflate + trailer)."""
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + zeros_deflated(megabytes) + struct.pack("<2L", zeros_crc(megabytes), (megabytes * MB) & 0xFFFFFFFF)


def test_gzip_inflation_stops_at_the_limit() -> None:
    bomb = gzip_bomb(1024)
    assert len(bomb) < 1_100_000
    with pytest.raises(TooLarge, match="more than 1,048,576 bytes"):
        inflate_gzip(bomb, MB)
    # Fed in small pieces, as from the network: the same limit across pieces.
    inflater, out = GzipInflater(MB), 0
    with pytest.raises(TooLarge):
        for i in range(0, len(bomb), 16_384):
            out += len(inflater.feed(bomb[i:i + 16_384]))
    assert out <= MB
    # A gzip of a gzip: each layer is bounded on its own.
    double = gzip.compress(gzip_bomb(256))
    with pytest.raises(TooLarge):
        inflate_gzip(inflate_gzip(double, 4 * MB), 4 * MB)


def test_gzip_that_fits_and_broken_gzip() -> None:
    data = b"<urlset>" + b"<url><loc>https://example.org/a</loc></url>" * 100 + b"</urlset>"
    assert inflate_gzip(gzip.compress(data), len(data)) == data
    assert inflate_gzip(gzip.compress(data[:50]) + gzip.compress(data[50:]) + b"\0" * 8, len(data)) == data
    with pytest.raises(TooLarge):
        inflate_gzip(gzip.compress(data), len(data) - 1)
    with pytest.raises(ValueError, match="truncated"):
        inflate_gzip(gzip.compress(data)[:-20], MB)
    with pytest.raises(ValueError, match="invalid gzip"):
        inflate_gzip(b"\x1f\x8bnot really gzip", MB)


class BombSite:
    """robots.txt, a gzip sitemap bomb, a gzip-encoded page bomb, a brotli page, a fine page."""

    def __init__(self) -> None:
        self.pages: dict[str, tuple[dict[str, str], bytes]] = {}
        self.accept_encoding: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.accept_encoding.append(self.headers.get("Accept-Encoding", ""))
                headers, body = site.pages.get(self.path, ({}, b""))
                try:
                    self.send_response(200 if self.path in site.pages else 404)
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

    def connector(self, **config: object) -> WebsiteConnector:
        return WebsiteConnector(WebsiteConfig(delay_s=0, **config), policy=NetPolicy(f"127.0.0.1:{self.port}"),  # type: ignore[arg-type]
                                max_item_bytes=2 * MB, timeout_s=20.0, user_agent="QuarryTest/1")


@pytest.fixture
def bomb_site() -> Iterator[BombSite]:
    site = BombSite()
    thread = threading.Thread(target=site.server.serve_forever, daemon=True)
    thread.start()
    site.pages["/robots.txt"] = ({"Content-Type": "text/plain"}, b"User-agent: *\nAllow: /\n")
    yield site
    site.server.shutdown()
    site.server.server_close()


async def _scan(connector: WebsiteConnector) -> list[object]:
    return [item async for item in connector.scan({})]


async def test_a_gzip_sitemap_bomb_fails_the_sync_with_a_reason(bomb_site: BombSite) -> None:
    bomb_site.pages["/sitemap.xml.gz"] = ({"Content-Type": "application/gzip"}, gzip_bomb(1024))
    connector = bomb_site.connector(sitemap_url=f"{bomb_site.base}/sitemap.xml.gz")
    with pytest.raises(ConnectorError, match=r"gzip sitemap .* refused: it inflates to more than 2,097,152 bytes"):
        await asyncio.wait_for(_scan(connector), 60)


async def test_a_gzip_sitemap_that_fits_is_read(bomb_site: BombSite) -> None:
    sitemap = f"<urlset><url><loc>{bomb_site.base}/a.html</loc></url></urlset>".encode()
    bomb_site.pages["/sitemap.xml.gz"] = ({"Content-Type": "application/gzip"}, gzip.compress(sitemap))
    bomb_site.pages["/a.html"] = ({"Content-Type": "text/html"}, b"<html><body>Andesite</body></html>")
    items = await _scan(bomb_site.connector(sitemap_url=f"{bomb_site.base}/sitemap.xml.gz"))
    assert [type(i) for i in items] == [Fetched] and items[0].data == b"<html><body>Andesite</body></html>"  # type: ignore[attr-defined]


async def test_content_encoding_bombs_fail_the_page_not_the_worker(bomb_site: BombSite) -> None:
    page = b"<html><body>Obsidian is volcanic glass.</body></html>"
    bomb_site.pages["/"] = ({"Content-Type": "text/html"},
                            b'<html><body><a href="/bomb">b</a> <a href="/double">d</a> <a href="/br">br</a>'
                            b' <a href="/fine">f</a></body></html>')
    bomb_site.pages["/bomb"] = ({"Content-Type": "text/html", "Content-Encoding": "gzip"}, gzip_bomb(1024))
    bomb_site.pages["/double"] = ({"Content-Type": "text/html", "Content-Encoding": "gzip, gzip"},
                                  gzip.compress(gzip_bomb(64)))
    bomb_site.pages["/br"] = ({"Content-Type": "text/html", "Content-Encoding": "br"}, b"\x0b\x02\x80hi\x03")
    bomb_site.pages["/fine"] = ({"Content-Type": "text/html", "Content-Encoding": "gzip"}, gzip.compress(page))
    items = await asyncio.wait_for(_scan(bomb_site.connector(start_url=f"{bomb_site.base}/", max_depth=1)), 60)
    by_uri = {i.uri.rsplit("/", 1)[-1]: i for i in items}  # type: ignore[attr-defined]
    bomb, double, br, fine = by_uri["bomb"], by_uri["double"], by_uri["br"], by_uri["fine"]
    assert isinstance(bomb, ItemFailed) and "inflates to more than 2,097,152 bytes (a gzip bomb?)" in bomb.error
    assert isinstance(double, ItemFailed) and "unsupported Content-Encoding 'gzip, gzip'" in double.error
    assert isinstance(br, ItemFailed) and "unsupported Content-Encoding 'br'" in br.error
    assert isinstance(fine, Fetched) and fine.data == page
    assert set(bomb_site.accept_encoding) == {"gzip"}  # nothing else is offered
