"""Plain text and Markdown."""

from __future__ import annotations

import re

from rag.parsing.base import ParsedDocument, Section, finish

__all__ = ["parse_markdown", "parse_plain"]

# ATX heading: up to 3 spaces, 1-6 '#', then space or end of line; an optional closing '#' run.
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_FRONT_MATTER_LINE = re.compile(r"^(?:[A-Za-z0-9_-]+\s*:|\s|-\s|#|$)")
_FRONT_MATTER_TITLE = re.compile(r"^title\s*:\s*(.+?)\s*$", re.I)


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
        match = None
        if fence is None:
            opening = _FENCE.match(line)
            if opening:
                fence = opening.group(1)
            else:
                match = _ATX.match(line)
        elif line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
            fence = None
        if match is None:
            body.append(line)
            continue
        sections.append(Section(text="\n".join(body), heading=heading))
        heading = (match.group(2) or "").strip()
        if title is None and len(match.group(1)) == 1 and heading:
            title = heading
        body = [heading]
    sections.append(Section(text="\n".join(body), heading=heading))
    return finish("md", title, sections)


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
        (m.group(1).strip("'\"") for m in map(_FRONT_MATTER_TITLE.match, lines[1:end]) if m), None
    )
    return title or None, lines[end + 1:]
