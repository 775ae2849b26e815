"""The offline provider: answers without any model, so the platform works out of the box.

It speaks the same protocol as an LLM (messages in, tool calls or text out) and drives the
same agent loop, deciding with heuristics instead of a network:

1. First step: resolve a follow-up against the earlier user turns (borrow their topic words),
   split a multi-part question into parts, and call `search` once per part.
2. After the results: a part whose best evidence is too weak gets one more retrieval with a
   keywords-only reformulation (a second step), if the agent still allows tool calls.
3. Then the answer: for each part, the best one or two sentences of the retrieved sources,
   scored by how many of the part's content words they contain, each followed by its [n]
   citation; when even the best sentence covers less than `min_coverage` of the part's
   content words (or none of them) it says plainly that the documents do not contain it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

import msgspec

from rag.agent.protocol import SEARCH, SourceView, parse_sources
from rag.llm.base import (
    Delta,
    Finish,
    Message,
    TextDelta,
    ToolCallDelta,
    ToolChoice,
    ToolSpec,
    Usage,
    estimate_prompt_tokens,
    estimate_tokens,
)
from rag.llm.heuristics import content_terms, content_words, decompose, resolve_follow_up, split_sentences

__all__ = ["NOT_FOUND", "OfflineProvider"]

NOT_FOUND = "I could not find"
"""Every "the documents do not say" answer starts with this."""

_MIN_SENTENCE_WORDS = 3
_WORD_PIECE = re.compile(r"\S++\s*+")  # possessive: linear on any answer


@dataclass
class _Part:
    text: str
    """The part of the question, as the user wrote it."""
    borrowed: list[str]
    """Topic words borrowed from earlier turns (follow-ups)."""
    own: set[str] = field(init=False)
    topic: set[str] = field(init=False)

    def __post_init__(self) -> None:
        self.own = content_terms(self.text)
        self.topic = content_terms(" ".join(self.borrowed)) - self.own

    @property
    def query(self) -> str:
        return f"{self.text} {' '.join(self.borrowed)}".strip()

    @property
    def keyword_query(self) -> str:
        return " ".join(content_words(self.query))

    def coverage(self, terms: set[str]) -> tuple[float, int]:
        """Share of the part's meaning units found in `terms` (the borrowed topic counts as one
        unit, met by any of its words) and how many of its own words matched."""
        matched_own = len(self.own & terms)
        units = len(self.own) + (1 if self.topic else 0)
        matched = matched_own + (1 if self.topic & terms else 0)
        return (matched / units if units else 0.0), matched_own


@dataclass(frozen=True)
class _Candidate:
    coverage: float
    matched: int
    order: int
    sentence: str
    n: int


class OfflineProvider:
    name = "offline"
    model = "quarry-offline"

    def __init__(self, *, min_coverage: float = 0.5, max_parts: int = 4, sentences_per_part: int = 2) -> None:
        if not 0 < min_coverage <= 1:
            raise ValueError("min_coverage must be in (0, 1]")
        self.min_coverage = min_coverage
        self.max_parts = max_parts
        self.sentences_per_part = sentences_per_part

    async def aclose(self) -> None:
        return None

    async def stream(
        self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = (), tool_choice: ToolChoice = "auto",
        max_tokens: int | None = None,
    ) -> AsyncGenerator[Delta, None]:
        prompt_tokens = estimate_prompt_tokens(messages)
        turn = _Turn.of(messages)
        parts = self._parts(turn)
        can_search = tool_choice != "none" and any(t.name == SEARCH for t in tools)
        queries = self._next_searches(parts, turn) if can_search else []
        if queries:
            arguments = [msgspec.json.encode({"query": q}).decode() for q in queries]
            for i, args in enumerate(arguments):
                yield ToolCallDelta(index=i, id=f"call_{turn.calls_made + i + 1}", name=SEARCH, arguments=args)
            completion = sum(estimate_tokens(a) for a in arguments)
            yield Finish(reason="tool_calls", usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion))
            return
        answer = self.answer(parts, turn.sources)
        emitted, reason = 0, "stop"
        for piece in _WORD_PIECE.findall(answer):
            cost = estimate_tokens(piece)
            if max_tokens is not None and emitted + cost > max_tokens:
                reason = "length"
                break
            emitted += cost
            yield TextDelta(piece)
        yield Finish(reason=reason, usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=emitted))

    # --- deciding ----------------------------------------------------------------------------

    def _parts(self, turn: _Turn) -> list[_Part]:
        question, borrowed = resolve_follow_up(turn.question, turn.earlier_questions)
        return [_Part(p, borrowed) for p in decompose(question, self.max_parts)]

    def _next_searches(self, parts: list[_Part], turn: _Turn) -> list[str]:
        if not turn.searched:  # first step: one retrieval per part
            return list(dict.fromkeys(p.query for p in parts))
        retries = []
        for part in parts:
            weak = self._best(part, turn.sources) is None
            if weak and part.keyword_query and part.keyword_query not in turn.searched:
                retries.append(part.keyword_query)
        return list(dict.fromkeys(retries))

    # --- answering ---------------------------------------------------------------------------

    def answer(self, parts: list[_Part], sources: list[SourceView]) -> str:
        if not parts:
            return f"{NOT_FOUND} a question in your message. What would you like to know about your documents?"
        paragraphs: list[str] = []
        for part in parts:
            chosen = self._best(part, sources)
            if chosen is None:
                if len(parts) == 1:
                    return (f"{NOT_FOUND} the answer in the documents: none of them says anything about "
                            f"\u201c{part.text}\u201d.")
                paragraphs.append(f"{NOT_FOUND} anything in the documents about \u201c{part.text}\u201d.")
            else:
                paragraphs.append(" ".join(f"{c.sentence} [{c.n}]" for c in chosen))
        return "\n\n".join(paragraphs)

    def _best(self, part: _Part, sources: list[SourceView]) -> list[_Candidate] | None:
        """The one or two best sentences for a part, or None when the evidence is too weak."""
        candidates: list[_Candidate] = []
        order = 0
        for source in sources:
            for sentence in split_sentences(source.text):
                order += 1
                if len(sentence.split()) < _MIN_SENTENCE_WORDS:
                    continue
                coverage, matched = part.coverage(content_terms(sentence))
                if matched:
                    candidates.append(_Candidate(coverage, matched, order, sentence, source.n))
        if not candidates:
            return None
        candidates.sort(key=lambda c: (-c.coverage, -c.matched, c.order))
        best = candidates[0]
        if best.coverage < self.min_coverage:
            return None
        chosen = [best]
        seen_terms = content_terms(best.sentence)
        for c in candidates[1:]:
            if len(chosen) >= self.sentences_per_part:
                break
            terms = content_terms(c.sentence)
            novel = terms - seen_terms
            # A second sentence only when it is nearly as relevant and says something new.
            if c.coverage >= max(self.min_coverage, best.coverage - 0.2) and len(novel) >= max(2, len(terms) // 2):
                chosen.append(c)
                seen_terms |= terms
        return chosen


@dataclass
class _Turn:
    """What the offline provider reads from the messages of the current turn."""

    question: str
    earlier_questions: list[str]
    searched: set[str]
    sources: list[SourceView]
    calls_made: int

    @classmethod
    def of(cls, messages: Sequence[Message]) -> _Turn:
        last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
        question = (messages[last_user].content or "") if last_user >= 0 else ""
        earlier = [m.content or "" for m in messages[: max(last_user, 0)] if m.role == "user"]
        searched: set[str] = set()
        sources: dict[int, SourceView] = {}
        calls_made = 0
        for m in messages[last_user + 1:]:
            for call in m.tool_calls:
                calls_made += 1
                if call.name == SEARCH:
                    try:
                        query = msgspec.json.decode(call.arguments).get("query")
                    except (msgspec.DecodeError, AttributeError):
                        query = None
                    if isinstance(query, str):
                        searched.add(query)
            if m.role == "tool" and m.content:
                for view in _views(m.content):
                    sources.setdefault(view.n, view)
        return cls(question, earlier, searched, list(sources.values()), calls_made)


def _views(content: str) -> list[SourceView]:
    """The sources in a tool message (search results or read passages); nothing for errors."""
    return parse_sources(content)
