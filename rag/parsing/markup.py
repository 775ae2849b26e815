"""HTML: the readable content of a page, without navigation chrome, split at h1-h6."""

from __future__ import annotations

import codecs
import re

from selectolax.lexbor import LexborHTMLParser, LexborNode

from rag.parsing.base import ParsedDocument, Section, clean_heading, finish

__all__ = ["decode_html", "parse_html"]

# Never content: scripts and styles, and the chrome around it (navigation, banners, forms, ...).
_DROP_TAGS = frozenset({
    "script", "style", "noscript", "nav", "footer", "aside", "form", "iframe", "svg", "template",
    "button", "select", "dialog", "object", "embed", "canvas", "head", "title", "meta", "link",
})
_DROP_ROLES = frozenset({"navigation", "banner", "contentinfo", "search", "complementary"})
# A <header> is a page banner unless it belongs to a piece of content (then it holds its title).
_CONTENT_SCOPES = frozenset({"article", "main", "section"})
_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
# Blocks that end a paragraph (blank line) vs. those that only end a line.
_PARAGRAPH_BLOCKS = frozenset({
    "p", "pre", "blockquote", "table", "ul", "ol", "dl", "figure", "section", "article", "main",
    "header", "hr", "address", "details", "fieldset", "center", *_HEADINGS,
})
_LINE_BLOCKS = frozenset({
    "div", "li", "tr", "dt", "dd", "br", "caption", "figcaption", "summary", "legend", "option",
    "tbody", "thead", "tfoot", "body", "html", "menu",
})
_CELLS = frozenset({"td", "th"})
_SPACES = re.compile(r"\s+")
# What follows `charset` in a <meta> tag: `= "label`, blanks anywhere, the quote optional. Each blank
# run is possessive and bounded by a character it cannot match: linear (see _declared_charset).
_CHARSET_VALUE = re.compile(rb"""\s*+=\s*+(?:["']\s*+)?([A-Za-z0-9._:-]++)""")


def decode_html(data: bytes) -> str:
    """BOM, then a declared <meta charset> (first 1 KB, as browsers do), then UTF-8; legacy pages
    that declare nothing and are not UTF-8 are read as windows-1252, which is what browsers do too."""
    for bom, encoding in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                          (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            return data.decode(encoding, errors="replace")
    declared = _declared_charset(data[:1024])
    if declared:
        try:
            return data.decode(codecs.lookup(declared.decode("ascii")).name, errors="replace")
        except LookupError:
            pass  # unknown charset label: fall through to UTF-8
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("windows-1252", errors="replace")


def _declared_charset(head: bytes) -> bytes | None:
    """The label of the first <meta ... charset=label> (the last `charset` inside that tag that
    has a value, as the regex `<meta[^>]+charset\\s*=\\s*["']?\\s*(label)` found it, re.I), by a
    scan: that regex retried `[^>]+` and its three blank runs against each other, polynomially."""
    lowered = head.lower()
    tag = lowered.find(b"<meta")
    while tag != -1:
        end = lowered.find(b">", tag)
        end = len(lowered) if end == -1 else end
        name = lowered.rfind(b"charset", tag + 6, end)  # `[^>]+`: at least one character before it
        while name != -1:
            value = _CHARSET_VALUE.match(head, name + 7, end)
            if value:
                return value.group(1)
            name = lowered.rfind(b"charset", tag + 6, name)
        # a later <meta before `end` sees a part of this tag only: it cannot match either
        tag = lowered.find(b"<meta", end)
    return None


def parse_html(html: str) -> ParsedDocument:
    tree = LexborHTMLParser(html)
    title = _title(tree)
    extractor = _Extractor()
    for root in _content_roots(tree):
        extractor = _Extractor()
        if any(section.text.strip() for section in extractor.run(root)):
            break
    # no <title>: the first h1 of the content as it was read (not one in dropped chrome)
    return finish("html", title or extractor.first_h1, extractor.sections)


def _title(tree: LexborHTMLParser) -> str | None:
    head = tree.head
    node = head.css_first("title") if head is not None else None
    if node is not None and node.text().strip():
        return node.text()
    og = tree.css_first('meta[property="og:title"]')
    if og is not None and (og.attributes.get("content") or "").strip():
        return og.attributes.get("content")
    return None


def _content_roots(tree: LexborHTMLParser) -> list[LexborNode]:
    """Where to read from, best first: <main>, a lone <article>, then the whole body."""
    roots: list[LexborNode] = []
    main = tree.css_first("main, [role=main]")
    if main is not None:
        roots.append(main)
    articles = tree.css("article")
    if len(articles) == 1:
        roots.append(articles[0])
    for fallback in (tree.body, tree.root):
        if fallback is not None:
            roots.append(fallback)
    return roots


def _dropped(node: LexborNode, tag: str, scopes: int) -> bool:
    if tag in _DROP_TAGS or (tag == "header" and scopes == 0):
        return True
    attrs = node.attributes
    if "hidden" in attrs or (attrs.get("aria-hidden") or "").strip().lower() == "true":
        return True
    return (attrs.get("role") or "").strip().lower() in _DROP_ROLES


class _Extractor:
    """Walks the DOM iteratively (pages can nest deeper than Python's recursion limit) and
    collects text with block structure, starting a section at each heading."""

    def __init__(self) -> None:
        self.sections: list[Section] = []
        self.heading: str | None = None
        self.parts: list[str] = []
        self.pending = 0  # break owed before the next text: 0 none, 1 newline, 2 blank line
        self.line_start = True
        self.separator = ""  # owed between table cells, emitted only if more text follows
        self.heading_parts: list[str] | None = None  # collecting the current heading's text
        self.pre = 0
        self.scopes = 0  # depth inside article/main/section
        self.first_h1: str | None = None

    def run(self, root: LexborNode) -> list[Section]:
        stack: list[tuple[LexborNode, bool]] = [(root, False)]
        while stack:
            node, leaving = stack.pop()
            tag = node.tag or ""
            if leaving:
                self._leave(tag)
                continue
            if tag == "-text":
                self._text(node.text_content or "")
                continue
            if tag.startswith("-") or (node is not root and _dropped(node, tag, self.scopes)):
                continue  # comments, doctype, chrome
            self._enter(tag)
            stack.append((node, True))
            stack.extend((child, False) for child in reversed(list(node.iter(include_text=True))))
        self._close_section()
        return self.sections

    def _enter(self, tag: str) -> None:
        if tag in _CONTENT_SCOPES:
            self.scopes += 1
        if tag == "pre":
            self.pre += 1
        if tag in _HEADINGS and self.heading_parts is None:
            self._close_section()
            self.heading_parts = []
        if tag in _CELLS and not self.line_start:
            self.separator = " | "
        self._block(tag)

    def _leave(self, tag: str) -> None:
        self._block(tag)
        if tag in _CONTENT_SCOPES:
            self.scopes -= 1
        if tag == "pre":
            self.pre -= 1
        if tag in _HEADINGS and self.heading_parts is not None:
            self.heading = clean_heading("".join(self.heading_parts))
            self.heading_parts = None
            if tag == "h1" and self.first_h1 is None:
                self.first_h1 = self.heading

    def _block(self, tag: str) -> None:
        if tag in _PARAGRAPH_BLOCKS:
            self.pending = 2
        elif tag in _LINE_BLOCKS:
            self.pending = max(self.pending, 1)

    def _text(self, text: str) -> None:
        if not self.pre:
            text = _SPACES.sub(" ", text)
            if self.line_start or self.pending:
                text = text.lstrip()
        if not text:
            return
        if self.heading_parts is not None:
            self.heading_parts.append(text)
        self._emit(text)

    def _emit(self, text: str) -> None:
        if self.pending and self.parts:
            self.parts.append("\n" * self.pending)
        elif self.separator and self.parts:
            self.parts.append(self.separator)
        self.pending, self.separator = 0, ""
        self.parts.append(text)
        self.line_start = text.endswith("\n")

    def _close_section(self) -> None:
        text = "".join(self.parts)
        if text.strip():
            self.sections.append(Section(text=text, heading=self.heading))
        self.parts, self.pending, self.separator, self.line_start = [], 0, "", True
        self.heading = None
