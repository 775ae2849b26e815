"""The offline provider and its text heuristics (no model, no database)."""

from __future__ import annotations

import msgspec
import pytest

from rag.agent.protocol import TOOL_SPECS, SourceView, new_nonce, render_search
from rag.llm.base import Message, ToolCall, collect
from rag.llm.heuristics import content_terms, decompose, is_follow_up, resolve_follow_up, split_sentences, stem
from rag.llm.offline import NOT_FOUND, OfflineProvider


@pytest.mark.parametrize(("a", "b"), [("ships", "ship"), ("proofing", "proof"), ("carved", "carve"),
                                      ("lives", "live"), ("glaciers", "glacier"), ("stopped", "stop"),
                                      ("batteries", "battery"), ("boxes", "box")])
def test_stem_matches_inflections(a, b):
    assert stem(a) == stem(b)


def test_content_terms_drop_stopwords_and_question_words():
    assert content_terms("What is the capital of Peru?") == {stem("capital"), stem("peru")}
    assert content_terms("How do I do it?") == set()


@pytest.mark.parametrize(("question", "parts"), [
    ("Where do penguins live?", ["Where do penguins live"]),
    ("What do penguins eat, and what are moraines?", ["What do penguins eat", "what are moraines"]),
    ("Who keeps the journal? How far is the lamp visible; what is sourdough",
     ["Who keeps the journal", "How far is the lamp visible", "what is sourdough"]),
    ("Compare penguins and albatrosses", ["Compare penguins and albatrosses"]),
    ("What are moraines?\nWho keeps the journal", ["What are moraines", "Who keeps the journal"]),
    ("Thanks! What are moraines?", ["Thanks! What are moraines"]),
])
def test_decompose(question, parts):
    assert decompose(question) == parts


def test_follow_ups_borrow_the_topic_of_earlier_turns():
    assert is_follow_up("What do they eat?") and is_follow_up("And the glaciers?") and is_follow_up("Why?")
    assert not is_follow_up("What do glaciers carve?")
    assert resolve_follow_up("What do they eat?", ["Where do penguins live?"]) == (
        "What do they eat?", ["penguins", "live"])
    # Chains resolve through the turns in between.
    chain = ["Where do penguins live?", "What do they eat?"]
    assert "penguins" in resolve_follow_up("How long do they live?", chain)[1]
    assert resolve_follow_up("What do glaciers carve?", ["Where do penguins live?"]) == (
        "What do glaciers carve?", [])


def test_split_sentences():
    text = "Glaciers carve valleys. Moraines are ridges!\n\n# Heading\n- a list item\n- another one"
    assert split_sentences(text) == ["Glaciers carve valleys.", "Moraines are ridges!", "Heading", "a list item",
                                     "another one"]


def _observation(query: str, texts: list[str], first: int = 1) -> str:
    views = [SourceView(n=first + i, title=f"doc{first + i}", text=t) for i, t in enumerate(texts)]
    return render_search(query, views, new_nonce())


def _after_search(question: str, observations: list[tuple[str, str]]) -> list[Message]:
    calls = [ToolCall(id=f"call_{i}", name="search", arguments=msgspec.json.encode({"query": q}).decode())
             for i, (q, _) in enumerate(observations)]
    return [Message(role="system", content="sys"), Message(role="user", content=question),
            Message(role="assistant", tool_calls=calls),
            *(Message(role="tool", tool_call_id=c.id, content=obs)
              for c, (_, obs) in zip(calls, observations, strict=True))]


async def test_first_step_searches_once_per_part():
    llm = OfflineProvider()
    messages = [Message(role="user", content="What do penguins eat, and what are moraines?")]
    completion = await collect(llm, messages, tools=TOOL_SPECS)
    assert completion.finish_reason == "tool_calls" and completion.text == ""
    queries = [msgspec.json.decode(c.arguments)["query"] for c in completion.tool_calls]
    assert queries == ["What do penguins eat", "what are moraines"]
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    # Without the search tool (or with tool_choice none) it answers from what it has: nothing.
    for kwargs in ({}, {"tools": TOOL_SPECS, "tool_choice": "none"}):
        answer = await collect(llm, messages, **kwargs)
        assert answer.tool_calls == [] and answer.text.startswith(NOT_FOUND)


async def test_answer_is_extracted_from_the_best_sentences_with_citations():
    llm = OfflineProvider()
    texts = ["Emperor penguins huddle together for warmth. Penguins eat krill, squid and small fish.",
             "Glaciers carve U-shaped valleys. The weather was nice."]
    messages = _after_search("What do penguins eat?", [("What do penguins eat", _observation("q", texts))])
    completion = await collect(llm, messages, tools=TOOL_SPECS)
    assert completion.text == "Penguins eat krill, squid and small fish. [1]"
    assert completion.finish_reason == "stop"


async def test_weak_evidence_gets_one_more_retrieval_then_not_found():
    llm = OfflineProvider()
    unrelated = _observation("q", ["Glaciers carve U-shaped valleys as they advance."])
    messages = _after_search("What is the boiling point of mercury?",
                             [("What is the boiling point of mercury", unrelated)])
    retry = await collect(llm, messages, tools=TOOL_SPECS)
    assert [msgspec.json.decode(c.arguments)["query"] for c in retry.tool_calls] == ["boiling point mercury"]
    messages = _after_search("What is the boiling point of mercury?",
                             [("What is the boiling point of mercury", unrelated),
                              ("boiling point mercury", unrelated)])
    final = await collect(llm, messages, tools=TOOL_SPECS)
    assert final.tool_calls == [] and final.text.startswith(NOT_FOUND)
    assert "boiling point of mercury" in final.text and "[" not in final.text


async def test_coverage_threshold_decides_what_counts_as_an_answer():
    texts = ["The lighthouse lamp uses a bright bulb."]  # shares "lighthouse" only: 1 of 3 content words
    messages = _after_search("When was the lighthouse first built?",
                             [("When was the lighthouse first built", _observation("q", texts)),
                              ("lighthouse first built", _observation("q", texts))])
    assert (await collect(OfflineProvider(), messages)).text.startswith(NOT_FOUND)
    lenient = await collect(OfflineProvider(min_coverage=0.3), messages)
    assert lenient.text == "The lighthouse lamp uses a bright bulb. [1]"


async def test_max_tokens_cuts_the_answer():
    texts = ["Penguins eat krill, squid and small fish that they catch underwater in the cold southern seas."]
    messages = _after_search("What do penguins eat?", [("What do penguins eat", _observation("q", texts))])
    completion = await collect(OfflineProvider(), messages, max_tokens=5)
    assert completion.finish_reason == "length" and completion.usage.completion_tokens <= 5
    assert completion.text and len(completion.text) < len(texts[0])
