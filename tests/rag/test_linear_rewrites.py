"""The linear rewrites agree with the backtracking regexes they replaced.

Each former regex is kept here as the reference and run on many random short strings drawn from
the characters that matter to it (short: there its backtracking is harmless). Agreement on all of
them is what "behaviour identical for normal input" means; test_adversarial.py checks the time.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

import pytest

from rag.agent.loop import _MARKER, strip_citations
from rag.connectors.globs import compile_glob, matches
from rag.llm import heuristics
from rag.parsing.base import normalise
from rag.parsing.detect import _starts_like_html
from rag.parsing.markup import _declared_charset
from rag.parsing.plain import _atx_heading, _front_matter_title

RUNS = 20_000


def samples(alphabet: Sequence[str], seed: int, longest: int = 10) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, longest))) for _ in range(RUNS)]


def agree(old: Callable[[str], object], new: Callable[[str], object], alphabet: Sequence[str], seed: int) -> None:
    for text in samples(alphabet, seed):
        assert new(text) == old(text), repr(text)


OLD_HTML_START = re.compile(rb"\s*(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head|body)[\s>]", re.I | re.S)


def test_html_sniffing() -> None:
    alphabet = ["<!--", "-->", "--", "-", "<", ">", " ", "\n", "\t", "\v", "<html", "<HTML>", "<head ", "<body>",
                "<!doctype", "<!DOCTYPE html>", "html", "x", "!", "<!---->"]
    agree(lambda t: bool(OLD_HTML_START.match(t.encode())), lambda t: _starts_like_html(t.encode()), alphabet, 1)


OLD_TRAILING_SPACE = re.compile(r"[^\S\n]+$", re.MULTILINE)


def test_trailing_blanks() -> None:
    def old(text: str) -> str:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = OLD_TRAILING_SPACE.sub("", text)
        return re.sub(r"\n{3,}", "\n\n", text).strip()

    alphabet = [" ", "\t", "\n", "\r", "\u00a0", "\u3000", "a", "b"]
    agree(old, normalise, alphabet, 2)


OLD_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
OLD_FRONT_MATTER_TITLE = re.compile(r"^title\s*:\s*(.+?)\s*$", re.I)


def test_atx_headings() -> None:
    def old(line: str) -> tuple[int, str] | None:
        match = OLD_ATX.match(line)
        return None if match is None else (len(match.group(1)), (match.group(2) or "").strip())

    def new(line: str) -> tuple[int, str] | None:
        atx = _atx_heading(line)
        return None if atx is None else (atx[0], atx[1].strip())

    agree(old, new, [" ", "\t", "#", "##", "a", "x y", "\u00a0", "\u3000"], 3)


def test_front_matter_title() -> None:
    def old(line: str) -> str | None:
        match = OLD_FRONT_MATTER_TITLE.match(line)
        return None if match is None else match.group(1)

    alphabet = ["title", "TITLE", "Title", "t\u0131tle", ":", "title:", " ", "\t", "\u00a0", "a", "'", '"']
    agree(old, _front_matter_title, alphabet, 4)


OLD_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.I)


def test_meta_charset() -> None:
    def old(text: str) -> bytes | None:
        match = OLD_META_CHARSET.search(text.encode())
        return match.group(1) if match else None

    alphabet = ["<meta", "<META", " ", "\t", "\n", "charset", "CharSet", "=", "'", '"', ">", "<", "utf-8", "x", ":"]
    agree(old, lambda t: _declared_charset(t.encode()), alphabet, 5)


OLD_MARKER = re.compile(r"\[(\d{1,4}(?:\s*[,;]\s*\d{1,4})*)\]")
CITATION_ALPHABET = ["[", "]", "1", "23", "12345", ",", ";", " ", "\t", ".", "!", "a", "\n", "?", ":"]


def test_citation_markers_and_stripping() -> None:
    def old(text: str) -> str:
        without = re.sub(r"[ \t]+([.,;:!?])", r"\1", OLD_MARKER.sub("", text))
        return re.sub(r"[ \t]{2,}", " ", without).strip()

    agree(old, strip_citations, CITATION_ALPHABET, 6)
    agree(lambda t: [m.span() for m in OLD_MARKER.finditer(t)], lambda t: [m.span() for m in _MARKER.finditer(t)],
          CITATION_ALPHABET, 7)


OLD_HEURISTICS = {
    "_WORD": re.compile(r"[A-Za-z0-9][A-Za-z0-9'\-]*"),
    "_SENTENCE_END": re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])|\n\s*\n|\n(?=\s*[-*•#\d])"),
    "_PART_SPLIT": re.compile(r"\?+\s*|;\s*|\n+"),
    "_AND_SPLIT": re.compile(
        r",?\s+(?:and|also|as well as|plus)\s+(?=(?:" + "|".join(heuristics._WH) + r")\b)", re.IGNORECASE
    ),
}


@pytest.mark.parametrize("name", sorted(OLD_HEURISTICS))
def test_heuristics_patterns(name: str) -> None:
    old, new = OLD_HEURISTICS[name], getattr(heuristics, name)
    alphabet = [" ", "\t", "\n", ",", ";", "?", ".", "!", ")", '"', "(", "[", "A", "a", "1", "-", "*", "#",
                "and", "AND", "as well as", "plus", "what", "How", "whatever", "x"]
    agree(lambda t: (old.split(t), [m.span() for m in old.finditer(t)]),
          lambda t: (new.split(t), [m.span() for m in new.finditer(t)]), alphabet, 8)


def old_glob(pattern: str) -> re.Pattern[str]:
    """The former translation (plus re.S: `**` now spans a newline in a name too, see below)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z", re.S)


def test_globs_agree_with_the_regex_translation() -> None:
    paths = samples(["a", "b", "/", ".", "\n", "ab", "//"], 9, longest=8)
    for pattern in samples(["*", "**", "**/", "?", "/", "a", "b", ".", "[", "\\"], 10, longest=7)[:4000]:
        reference, glob = old_glob(pattern), compile_glob(pattern)
        for path in paths[:25]:
            assert glob.match(path) == bool(reference.match(path)), (pattern, path)
        paths = paths[25:] + paths[:25]


@pytest.mark.parametrize(("path", "include", "exclude", "expected"), [
    ("a.md", ["**/*.md"], [], True),
    ("x/y/a.md", ["**/*.md"], [], True),
    ("x/y/a.txt", ["**/*.md"], [], False),
    ("x/a.md", ["*.md"], [], False),  # `*` stays in its segment
    ("docs/a/b", ["docs/**"], [], True),
    ("docs", ["docs/**"], [], False),
    ("a/b.md", ["a/?.md"], [], True),
    ("a/bc.md", ["a/?.md"], [], False),
    ("a/draft/b.md", ["**/*.md"], ["**/draft/**"], False),
    ("secret/a\nb", [], ["secret/**"], False),  # a newline in a name does not escape `**`
    ("anything", [], [], True),
])
def test_glob_semantics(path: str, include: list[str], exclude: list[str], expected: bool) -> None:
    assert matches(path, include, exclude) is expected
