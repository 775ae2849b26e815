"""Plain text and Markdown."""

from __future__ import annotations

import re

from rag.parsing.base import ParsedDocument, Section, finish

__all__ = ["parse_markdown", "parse_plain"]

# Lines are read with str methods and regexes of one unbounded quantifier at a fixed start: a
# line is untrusted and can be megabytes long. (The former `_ATX` regex, with a lazy `.*?` before
# optional blank runs, was quadratic on a heading line padded with spaces.)
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_FRONT_MATTER_LINE = re.compile(r"^(?:[A-Za-z0-9_-]+\s*:|\s|-\s|#|$)")
_FRONT_MATTER_TITLE_KEY = re.compile(r"title\s*:", re.I)
_BLANKS = " \t"


def parse_plain(text: str) -> ParsedDocument:
    return finish("txt", None, [Section(text=text)])


def parse_markdown(text: str) -> ParsedDocument:
    """Sections split at ATX headings (not inside fenced code); the heading line stays in the text
    without its '#' markers, so the document still reads in full."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    title, lines = _front_matter(lines)
    sections: list[Section] = []
    heading: str | None = None
    body: list[str] = []
    fence: str | None = None
    for line in lines:
        atx = None
        if fence is None:
            opening = _FENCE.match(line)
            if opening:
                fence = opening.group(1)
            else:
                atx = _atx_heading(line)
        elif line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
            fence = None
        if atx is None:
            body.append(line)
            continue
        sections.append(Section(text="\n".join(body), heading=heading))
        level, heading = atx[0], atx[1].strip()
        if title is None and level == 1 and heading:
            title = heading
        body = [heading]
    sections.append(Section(text="\n".join(body), heading=heading))
    return finish("md", title, sections)


def _atx_heading(line: str) -> tuple[int, str] | None:
    """(level, text) of an ATX heading line: up to 3 spaces, 1-6 '#', then a blank or the end of
    the line; the text without the blanks around it nor an optional closing '#' run."""
    rest = line.lstrip(" ")
    if len(line) - len(rest) > 3:
        return None
    text = rest.lstrip("#")
    level = len(rest) - len(text)
    if not 1 <= level <= 6 or (text and text[0] not in _BLANKS):
        return None
    text = text.strip(_BLANKS)
    unclosed = text.rstrip("#")
    if unclosed != text and unclosed[-1:] in (" ", "\t"):  # the closing run follows a blank
        text = unclosed.rstrip(_BLANKS)
    return level, text


def _front_matter_title(line: str) -> str | None:
    """The value of a `title:` line, whitespace trimmed (a blank value stays one blank)."""
    key = _FRONT_MATTER_TITLE_KEY.match(line)
    if key is None or key.end() == len(line):
        return None
    value = line[key.end():]
    return value.strip() or value[-1]


def _front_matter(lines: list[str]) -> tuple[str | None, list[str]]:
    """YAML front matter (`---` ... `---`) is metadata, not content: take its title, drop the block."""
    if not lines or lines[0].strip() != "---":
        return None, lines
    for end in range(1, min(len(lines), 200)):
        if lines[end].strip() in ("---", "..."):
            break
        if not _FRONT_MATTER_LINE.match(lines[end]):
            return None, lines  # a thematic break followed by prose, not front matter
    else:
        return None, lines
    title = next(
        (value.strip("'\"") for value in map(_front_matter_title, lines[1:end]) if value is not None), None
    )
    return title or None, lines[end + 1:]
