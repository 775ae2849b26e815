"""Parsing real files written by the tests themselves (fpdf2, pypdf, python-docx, zipfile)."""

from __future__ import annotations

import io
import random
import zipfile
from collections.abc import Callable
from pathlib import Path

import docx
import pypdf
import pytest
from fpdf import FPDF

import rag.parsing
from core.errors import Unprocessable, UnsupportedMediaType
from rag.parsing import ParsedDocument, ParseError, UnsupportedFormat, detect_format, parse_file, parse_text

FORMATS = rag.parsing.FORMATS

WriteFile = Callable[[str, bytes], Path]


@pytest.fixture
def write(tmp_path: Path) -> WriteFile:
    def _write(name: str, data: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return _write


def texts(doc: ParsedDocument) -> str:
    return "\n\n".join(section.text for section in doc.sections)


# --- PDF -------------------------------------------------------------------------------------------

def make_pdf(pages: list[str], title: str | None = None) -> bytes:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    if title:
        pdf.set_title(title)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


def encrypt_pdf(data: bytes, user_password: str, owner_password: str) -> bytes:
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=user_password, owner_password=owner_password, algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_pdf_one_section_per_page(write: WriteFile) -> None:
    data = make_pdf(["The first page talks about granite.", "The second page is about basalt."],
                    title="Rocks")
    doc = parse_file(write("rocks.pdf", data), "pdf")
    assert doc.format == "pdf"
    assert doc.title == "Rocks"
    assert [section.page for section in doc.sections] == [1, 2]
    assert "granite" in doc.sections[0].text and "basalt" not in doc.sections[0].text
    assert "basalt" in doc.sections[1].text
    assert all(section.heading is None for section in doc.sections)


def test_pdf_without_metadata_title_has_none(write: WriteFile) -> None:
    doc = parse_file(write("a.pdf", make_pdf(["Some words."])), "pdf")
    assert doc.title is None


def test_pdf_encrypted_with_a_password_is_refused(write: WriteFile) -> None:
    data = encrypt_pdf(make_pdf(["Top secret text."]), user_password="secret", owner_password="owner")
    with pytest.raises(ParseError, match="encrypted") as info:
        parse_file(write("locked.pdf", data), "pdf")
    assert info.value.status == 422


def test_pdf_encrypted_with_empty_user_password_parses(write: WriteFile) -> None:
    data = encrypt_pdf(make_pdf(["Readable by anyone."]), user_password="", owner_password="owner")
    assert pypdf.PdfReader(io.BytesIO(data)).is_encrypted
    doc = parse_file(write("perms.pdf", data), "pdf")
    assert "Readable by anyone." in texts(doc)


def test_pdf_garbage_is_corrupt(write: WriteFile) -> None:
    with pytest.raises(ParseError, match="corrupt or unreadable"):
        parse_file(write("bad.pdf", b"%PDF-1.4 garbage"), "pdf")


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_pdf_truncated_is_corrupt(write: WriteFile, fraction: float) -> None:
    data = make_pdf(["Page one " * 40, "Page two " * 40])
    with pytest.raises(ParseError, match="corrupt or unreadable"):
        parse_file(write("cut.pdf", data[: int(len(data) * fraction)]), "pdf")


def test_pdf_without_text_layer(write: WriteFile) -> None:
    pdf = FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 100, 60, style="F")
    with pytest.raises(ParseError, match="no text layer"):
        parse_file(write("scan.pdf", bytes(pdf.output())), "pdf")


def test_pdf_page_cap(write: WriteFile, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rag.parsing.pdf, "MAX_PDF_PAGES", 1)
    with pytest.raises(ParseError, match="at most 1 are supported"):
        parse_file(write("long.pdf", make_pdf(["one", "two"])), "pdf")


# --- DOCX ------------------------------------------------------------------------------------------

def one_paragraph(text: str) -> Callable[[docx.document.Document], None]:
    def build(d: docx.document.Document) -> None:
        d.add_paragraph(text)

    return build


def make_docx(build: Callable[[docx.document.Document], None]) -> bytes:
    document = docx.Document()
    build(document)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def test_docx_headings_paragraphs_and_tables(write: WriteFile) -> None:
    def build(d: docx.document.Document) -> None:
        d.add_paragraph("Quarterly report", style="Title")
        d.add_paragraph("Preamble before any heading.")
        d.add_heading("Revenue", level=1)
        d.add_paragraph("Revenue grew in every region.")
        table = d.add_table(rows=2, cols=2)
        for r, row in enumerate([["Region", "Growth"], ["North", "12%"]]):
            for c, value in enumerate(row):
                table.cell(r, c).text = value
        d.add_heading("Costs", level=2)
        d.add_paragraph("Costs were flat.")

    doc = parse_file(write("report.docx", make_docx(build)), "docx")
    assert doc.format == "docx"
    assert doc.title == "Quarterly report"
    headings = [section.heading for section in doc.sections]
    assert headings == ["Quarterly report", "Revenue", "Costs"]
    revenue = doc.sections[1]
    assert revenue.text.startswith("Revenue\n\nRevenue grew in every region.")
    assert "Region | Growth" in revenue.text and "North | 12%" in revenue.text
    assert "Preamble before any heading." in doc.sections[0].text
    assert doc.sections[2].text == "Costs\n\nCosts were flat."


def test_docx_core_properties_title_wins(write: WriteFile) -> None:
    def build(d: docx.document.Document) -> None:
        d.core_properties.title = "From metadata"
        d.add_paragraph("Body text.")

    doc = parse_file(write("meta.docx", make_docx(build)), "docx")
    assert doc.title == "From metadata"
    assert doc.sections[0].heading is None


def test_docx_random_bytes_is_corrupt(write: WriteFile) -> None:
    data = random.Random(7).randbytes(4096)
    with pytest.raises(ParseError, match="DOCX file is corrupt"):
        parse_file(write("bad.docx", data), "docx")


def test_docx_zip_without_document_is_corrupt(write: WriteFile) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("hello.txt", "not a word document")
    with pytest.raises(ParseError, match="DOCX file is corrupt"):
        parse_file(write("zip.docx", out.getvalue()), "docx")


def test_docx_missing_main_part_is_corrupt(write: WriteFile) -> None:
    # A real .docx with word/document.xml removed: the package is there, the document is not.
    source = zipfile.ZipFile(io.BytesIO(make_docx(one_paragraph("x"))))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for item in source.infolist():
            if item.filename != "word/document.xml":
                archive.writestr(item, source.read(item))
    with pytest.raises(ParseError, match="DOCX file is corrupt"):
        parse_file(write("hollow.docx", out.getvalue()), "docx")


def test_docx_truncated_is_corrupt(write: WriteFile) -> None:
    data = make_docx(one_paragraph("Some text " * 200))
    with pytest.raises(ParseError, match="DOCX file is corrupt"):
        parse_file(write("cut.docx", data[: len(data) // 2]), "docx")


# --- HTML ------------------------------------------------------------------------------------------

PAGE = """<!doctype html>
<html><head><title>  The Page   Title </title><style>body { color: red }</style>
<script>var tracking = "SCRIPT-TEXT";</script></head>
<body>
<header><a href="/">HEADER-LOGO</a></header>
<nav><ul><li>NAV-HOME</li><li>NAV-ABOUT</li></ul></nav>
<div role="navigation">ROLE-NAV</div>
<main>
  <h1>Main heading</h1>
  <p>First   paragraph
     with <b>bold</b> and <a href="#">a link</a>.</p>
  <script>alert("MAIN-SCRIPT")</script>
  <h2>Details &amp; more</h2>
  <p>Second paragraph.</p>
  <ul><li>item one</li><li>item two</li></ul>
  <table><tr><th>Name</th><th>Value</th></tr><tr><td>alpha</td><td>1</td></tr></table>
  <pre>line 1
    indented line 2</pre>
</main>
<aside>ASIDE-TEXT</aside>
<form><label>FORM-LABEL</label><input></form>
<noscript>NOSCRIPT-TEXT</noscript>
<footer>FOOTER-TEXT</footer>
</body></html>"""


def test_html_drops_chrome_and_splits_at_headings(write: WriteFile) -> None:
    doc = parse_file(write("page.html", PAGE.encode()), "html")
    assert doc.format == "html"
    assert doc.title == "The Page Title"
    full = texts(doc)
    for chrome in ("SCRIPT", "HEADER-LOGO", "NAV-", "ROLE-NAV", "ASIDE", "FORM-LABEL", "NOSCRIPT", "FOOTER",
                   "color: red"):
        assert chrome not in full
    assert [section.heading for section in doc.sections] == ["Main heading", "Details & more"]
    first, second = doc.sections
    assert first.text == "Main heading\n\nFirst paragraph with bold and a link."
    assert second.text.startswith("Details & more\n\nSecond paragraph.\n\nitem one\nitem two")
    assert "Name | Value\nalpha | 1" in second.text
    assert "line 1\n    indented line 2" in second.text


def test_html_without_main_reads_body_minus_chrome() -> None:
    html = """<html><body><nav>NAV</nav><div class="content"><h1>Only heading</h1>
    <div>Block one</div><div>Block two</div><span>inline</span> <span>words</span></div>
    <footer>FOOT</footer></body></html>"""
    doc = parse_text(html, "html")
    assert doc.title == "Only heading"  # no <title>: the first h1
    assert doc.sections[0].heading == "Only heading"
    assert texts(doc) == "Only heading\n\nBlock one\nBlock two\ninline words"


def test_html_article_header_is_content_but_page_header_is_not() -> None:
    html = """<header>SITE-BANNER</header><article><header><h1>Post title</h1></header>
    <p>Post body.</p><footer>POST-FOOTER</footer></article>"""
    doc = parse_text(html, "html")
    assert texts(doc) == "Post title\n\nPost body."
    assert doc.title == "Post title"


def test_html_hidden_and_roles_dropped() -> None:
    html = """<main><p>Visible.</p><p hidden>HIDDEN</p><div aria-hidden="true">ARIA</div>
    <div role="banner">BANNER</div><div role="contentinfo">INFO</div></main>"""
    assert texts(parse_text(html, "html")) == "Visible."


def test_html_declared_legacy_charset(write: WriteFile) -> None:
    data = '<meta charset="windows-1252"><p>Caf\u00e9 cr\u00e8me</p>'.encode("cp1252")
    doc = parse_file(write("legacy.htm", data), "html")
    assert texts(doc) == "Caf\u00e9 cr\u00e8me"


def test_html_with_only_chrome_has_no_text() -> None:
    with pytest.raises(ParseError, match="contains no text"):
        parse_text("<nav>menu</nav><script>x()</script>", "html")


def test_html_deeply_nested_does_not_recurse() -> None:
    html = "<div>" * 5000 + "deep text" + "</div>" * 5000
    assert texts(parse_text(html, "html")) == "deep text"


# --- Markdown --------------------------------------------------------------------------------------

def test_markdown_sections_by_atx_headings(write: WriteFile) -> None:
    md = """Intro text before headings.

# Guide

Welcome **reader**.

## Install ##

Run this:

```sh
# not a heading: a shell comment
pip install quarry
```

###### Deep
Last words.
#hashtag is not a heading
"""
    doc = parse_file(write("guide.md", md.encode()), "md")
    assert doc.format == "md"
    assert doc.title == "Guide"
    assert [section.heading for section in doc.sections] == [None, "Guide", "Install", "Deep"]
    assert doc.sections[0].text == "Intro text before headings."
    assert doc.sections[1].text == "Guide\n\nWelcome **reader**."
    assert "# not a heading: a shell comment" in doc.sections[2].text
    assert doc.sections[2].text.startswith("Install\n\nRun this:")
    assert doc.sections[3].text == "Deep\nLast words.\n#hashtag is not a heading"


def test_markdown_front_matter_title() -> None:
    md = "---\ntitle: \"From front matter\"\ntags: [a, b]\n---\n# Heading\n\nBody."
    doc = parse_text(md, "md")
    assert doc.title == "From front matter"
    assert "tags" not in texts(doc)


def test_markdown_thematic_break_is_not_front_matter() -> None:
    md = "---\nJust prose after a rule.\n\n---\nMore prose."
    assert "Just prose after a rule." in texts(parse_text(md, "md"))


# --- Plain text and normalisation -------------------------------------------------------------------

def test_txt_utf8_paragraphs(write: WriteFile) -> None:
    doc = parse_file(write("a.txt", "Caf\u00e9 one.\n\nParagraph two.\n".encode()), "txt")
    assert doc.format == "txt"
    assert doc.title is None
    assert doc.sections == [rag.parsing.Section(text="Caf\u00e9 one.\n\nParagraph two.")]


def test_txt_utf8_bom(write: WriteFile) -> None:
    doc = parse_file(write("bom.txt", b"\xef\xbb\xbfHello BOM"), "txt")
    assert texts(doc) == "Hello BOM"


def test_txt_utf16_bom(write: WriteFile) -> None:
    doc = parse_file(write("u16.txt", "Hello UTF-16 \u00e9".encode("utf-16")), "txt")
    assert texts(doc) == "Hello UTF-16 \u00e9"


def test_txt_invalid_utf8(write: WriteFile) -> None:
    with pytest.raises(ParseError, match="not valid UTF-8") as info:
        parse_file(write("latin1.txt", "caf\u00e9 au lait".encode("latin-1")), "txt")
    assert "offset 3" in info.value.detail


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_empty_file(write: WriteFile, fmt: str) -> None:
    with pytest.raises(ParseError, match="empty"):
        parse_file(write(f"empty.{fmt}", b""), fmt)


@pytest.mark.parametrize("fmt", ["txt", "md", "html"])
def test_whitespace_only(write: WriteFile, fmt: str) -> None:
    with pytest.raises(ParseError, match="contains no text"):
        parse_file(write(f"blank.{fmt}", b" \n\t\r\n  \n"), fmt)


def test_normalisation(write: WriteFile) -> None:
    raw = b"line\x00one   \r\nline two\t\r\n\r\n\r\n\r\n\r\nafter gap\x07\x0cpage"
    doc = parse_file(write("n.txt", raw), "txt")
    assert texts(doc) == "lineone\nline two\n\nafter gap\npage"
    assert "\x00" not in texts(parse_text("a\x00b", "md"))


def test_parse_text_formats() -> None:
    assert parse_text("plain words").format == "txt"
    assert parse_text("# T\nbody", "md").title == "T"
    with pytest.raises(UnsupportedFormat):
        parse_text("%PDF-1.4", "pdf")


def test_parse_file_unknown_format(write: WriteFile) -> None:
    with pytest.raises(UnsupportedFormat) as info:
        parse_file(write("x.bin", b"data"), "exe")
    assert info.value.status == 415


def test_unexpected_library_errors_become_parse_errors(
    write: WriteFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(html: str) -> ParsedDocument:
        raise RuntimeError("boom")

    monkeypatch.setattr(rag.parsing, "_parse_html", explode)
    with pytest.raises(ParseError, match="could not be parsed: boom"):
        parse_file(write("x.html", b"<p>x</p>"), "html")


def test_error_classes() -> None:
    assert issubclass(ParseError, Unprocessable) and ParseError.status == 422
    assert issubclass(UnsupportedFormat, UnsupportedMediaType) and UnsupportedFormat.status == 415


# --- detect_format ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("filename", "fmt"), [
    ("a.txt", "txt"), ("a.text", "txt"), ("README.md", "md"), ("notes.MARKDOWN", "md"),
    ("index.html", "html"), ("index.HTM", "html"), ("paper.pdf", "pdf"), ("letter.docx", "docx"),
    ("C:\\Users\\me\\Report.PDF", "pdf"), ("dir/sub/readme.md", "md"),
])
def test_detect_by_extension(filename: str, fmt: str) -> None:
    # the extension wins over a misleading content type and content
    assert detect_format(filename, "application/octet-stream", b"\x00\x01") == fmt


@pytest.mark.parametrize(("content_type", "fmt"), [
    ("text/plain; charset=utf-8", "txt"), ("text/markdown", "md"), ("text/x-markdown", "md"),
    ("TEXT/HTML; charset=ISO-8859-1", "html"), ("application/xhtml+xml", "html"),
    ("application/pdf", "pdf"), (FORMATS["docx"], "docx"),
])
def test_detect_by_content_type(content_type: str, fmt: str) -> None:
    assert detect_format("upload", content_type, b"\x00\x01") == fmt
    assert detect_format(None, content_type, b"") == fmt


def test_detect_by_magic() -> None:
    assert detect_format(None, None, make_pdf(["x"])[:4096]) == "pdf"
    assert detect_format("blob", "application/octet-stream", b"%PDF-1.7\n...") == "pdf"
    docx_head = make_docx(one_paragraph("hello"))[:4096]
    assert docx_head.startswith(b"PK\x03\x04")
    assert detect_format(None, "application/octet-stream", docx_head) == "docx"
    assert detect_format(None, None, b"<!DOCTYPE html><html><body>x") == "html"
    assert detect_format(None, None, b"\xef\xbb\xbf  <html lang=en>") == "html"
    assert detect_format("README", None, "plain words, caf\u00e9".encode()) == "txt"
    # the head may end in the middle of a multi-byte character
    assert detect_format(None, None, "\u00e9t\u00e9".encode()[:-1]) == "txt"


@pytest.mark.parametrize(("filename", "content_type", "head"), [
    ("setup.exe", "application/octet-stream", random.Random(1).randbytes(4096)),
    (None, None, random.Random(2).randbytes(4096)),
    ("archive.zip", "application/zip", b"PK\x03\x04" + bytes(100)),
    (None, None, b""),
])
def test_detect_unsupported(filename: str | None, content_type: str | None, head: bytes) -> None:
    with pytest.raises(UnsupportedFormat) as info:
        detect_format(filename, content_type, head)
    assert info.value.status == 415
    detail = info.value.detail
    assert "supported formats are txt" in detail and "docx" in detail
    if filename:
        assert filename in detail
    assert info.value.extra["supported"] == sorted(FORMATS)


def test_detect_legacy_word_says_what_to_do() -> None:
    with pytest.raises(UnsupportedFormat, match=r"save the document as \.docx"):
        detect_format("old.doc", "application/msword", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64))


@pytest.mark.parametrize("fmt", ["pdf", "docx"])
def test_random_bytes_never_escape_as_library_errors(write: WriteFile, fmt: str) -> None:
    rng = random.Random(3)
    magic = b"%PDF-1.4\n" if fmt == "pdf" else b"PK\x03\x04"
    for size in (1, 10, 1000, 100_000):
        with pytest.raises(ParseError):
            parse_file(write(f"r.{fmt}", magic + rng.randbytes(size)), fmt)


def test_mangled_real_files_fail_cleanly(write: WriteFile) -> None:
    """Flip bytes inside real files: whatever happens, only ParseError (or a parse) comes out."""
    rng = random.Random(5)
    originals = {
        "pdf": make_pdf(["Mangle me " * 30, "Page two"]),
        "docx": make_docx(one_paragraph("Mangle me")),
    }
    for fmt, data in originals.items():
        for _ in range(25):
            mangled = bytearray(data)
            for _ in range(8):
                mangled[rng.randrange(len(mangled))] = rng.randrange(256)
            try:
                parse_file(write(f"m.{fmt}", bytes(mangled)), fmt)
            except ParseError:
                pass
