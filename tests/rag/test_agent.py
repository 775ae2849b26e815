"""The agent loop with in-memory tools and scripted providers (no database, no network)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import pytest

from core.errors import NotFound
from rag.agent import (
    Agent,
    AgentLimits,
    CitationEvent,
    CollectionInfo,
    DoneEvent,
    ErrorEvent,
    Passage,
    StepEvent,
    TokenEvent,
    ToolCallEvent,
    ToolResultEvent,
    strip_citations,
)
from rag.agent.protocol import parse_sources
from rag.llm.base import Delta, Finish, Message, TextDelta, ToolCallDelta, ToolSpec, Usage
from rag.llm.errors import LLMUnavailable
from rag.llm.heuristics import content_terms
from rag.llm.offline import OfflineProvider

COLLECTION = uuid.uuid4()
DOCUMENT = uuid.uuid4()
TEXTS = [
    "Penguins live along the coasts of Antarctica. They breed in large colonies.",
    "Penguins eat krill, squid and small fish.",
    "Glaciers carve U-shaped valleys as they advance.",
]
PASSAGES = [Passage(chunk_id=100 + i, document_id=DOCUMENT, collection_id=COLLECTION, title=f"doc{i}", uri=None,
                    ord=i, text=text) for i, text in enumerate(TEXTS)]


class MemoryTools:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def search(self, query: str, *, k: int, collection: str | None) -> list[Passage]:
        self.calls.append(("search", query))
        if collection == "missing":
            raise NotFound("no collection named 'missing'")
        if query == "explode":
            raise RuntimeError("database on fire")
        terms = content_terms(query)
        ranked = sorted(PASSAGES, key=lambda p: -len(terms & content_terms(p.text)))
        return ranked[:k]

    async def read_document(self, chunk_id: int, *, before: int, after: int) -> list[Passage]:
        self.calls.append(("read_document", chunk_id))
        return [p for p in PASSAGES if chunk_id - before <= p.chunk_id <= chunk_id + after]

    async def list_collections(self) -> list[CollectionInfo]:
        return [CollectionInfo(id=COLLECTION, name="nature", description="animals and ice")]


def tool_call(index: int, name: str, arguments: Any, call_id: str | None = None) -> ToolCallDelta:
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return ToolCallDelta(index=index, id=call_id or f"c{index}", name=name, arguments=raw)


class ScriptedProvider:
    """Plays one script per call: deltas, an exception to raise, or "hang"."""

    name = "scripted"
    model = "scripted-1"

    def __init__(self, *scripts: Any, repeat_last: bool = False) -> None:
        self.scripts = list(scripts)
        self.repeat_last = repeat_last
        self.calls: list[dict[str, Any]] = []

    async def aclose(self) -> None:
        return None

    async def stream(self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = (),
                     tool_choice: str = "auto", max_tokens: int | None = None) -> AsyncGenerator[Delta, None]:
        self.calls.append({"messages": list(messages), "tools": [t.name for t in tools], "tool_choice": tool_choice,
                           "max_tokens": max_tokens})
        script = self.scripts.pop(0) if len(self.scripts) > 1 or not self.repeat_last else self.scripts[0]
        if isinstance(script, Exception):
            raise script
        for item in script:
            if item == "hang":
                await asyncio.sleep(3600)
            yield item


def text(answer: str, usage: Usage | None = None) -> list[Delta]:
    return [*(TextDelta(w + " ") for w in answer.split(" ")), Finish(reason="stop", usage=usage)]


async def run_agent(agent: Agent, question: str, history: Sequence[Message] = ()) -> tuple[Any, list[Any]]:
    run = agent.start(question, history)
    events: list[Any] = []
    await run.execute(events.append)
    return run, events


async def test_offline_agent_event_order_and_citations():
    agent = Agent(OfflineProvider(), MemoryTools())
    run, events = await run_agent(agent, "Where do penguins live?")
    kinds = [type(e) for e in events]
    assert kinds[:4] == [StepEvent, ToolCallEvent, ToolResultEvent, StepEvent]
    assert kinds[-2:] == [CitationEvent, DoneEvent] and set(kinds[4:-2]) == {TokenEvent}
    done = events[-1]
    assert done.answer == "Penguins live along the coasts of Antarctica. [1]"
    assert "".join(e.text for e in events if isinstance(e, TokenEvent)).strip() == done.answer
    assert done.citations == [events[-2]] and events[-2].chunk_id == 100
    assert events[-2].quote == "Penguins live along the coasts of Antarctica."
    assert done.usage.total_tokens == run.usage.total_tokens > 0 and done.steps == 2
    assert run.tool_calls[0].sources == [100, 101, 102][: len(run.tool_calls[0].sources)]


async def test_only_markers_naming_returned_sources_become_citations():
    provider = ScriptedProvider(
        [tool_call(0, "search", {"query": "penguins", "k": 2}), Finish(reason="tool_calls")],
        text("Krill and fish [2]. Antarctica [1, 2][2]. Invented [7] and [0]."),
    )
    _, events = await run_agent(Agent(provider, MemoryTools()), "Penguins?")
    citations = [e for e in events if isinstance(e, CitationEvent)]
    assert [c.n for c in citations] == [2, 1]  # first mention first, each once, unknown numbers dropped
    assert {c.chunk_id for c in citations} <= {p.chunk_id for p in PASSAGES}
    assert citations[0].quote == "Penguins eat krill, squid and small fish."
    result = next(e for e in events if isinstance(e, ToolResultEvent))
    assert [s.n for s in result.sources] == [1, 2]
    observation = provider.calls[1]["messages"][-1].content
    assert [s.n for s in parse_sources(observation)] == [1, 2]
    assert observation.startswith('Search results for "penguins": 2 source(s).')


async def test_steps_are_bounded_and_the_last_one_must_answer():
    provider = ScriptedProvider([tool_call(0, "search", {"query": "penguins"}), Finish(reason="tool_calls")],
                                repeat_last=True)
    run, events = await run_agent(Agent(provider, MemoryTools(), AgentLimits(max_steps=3)), "Penguins?")
    assert [c["tool_choice"] for c in provider.calls] == ["auto", "auto", "none"]
    assert [e.step for e in events if isinstance(e, StepEvent)] == [1, 2, 3]
    assert isinstance(events[-1], DoneEvent) and events[-1].finish_reason == "max_steps"
    assert len(run.tool_calls) == 2  # the calls of the last step were not executed


async def test_the_token_budget_forces_the_answer():
    heavy = Usage(prompt_tokens=3000, completion_tokens=10)
    provider = ScriptedProvider([tool_call(0, "search", {"query": "penguins"}), Finish(reason="tool_calls",
                                                                                       usage=heavy)],
                                text("Antarctica [1].", usage=heavy))
    limits = AgentLimits(max_steps=5, max_tokens=4000, max_answer_tokens=500)
    run, events = await run_agent(Agent(provider, MemoryTools(), limits), "Penguins?")
    assert [c["tool_choice"] for c in provider.calls] == ["auto", "none"]
    assert provider.calls[1]["max_tokens"] == 500
    assert events[-1].usage.total_tokens == 6020 and run.finish_reason == "stop"


async def test_deadline_ends_the_run_with_an_error_event():
    provider = ScriptedProvider([TextDelta("thinking "), "hang"])
    loop = asyncio.get_running_loop()
    started = loop.time()
    run, events = await run_agent(Agent(provider, MemoryTools(), AgentLimits(deadline_s=0.2)), "Penguins?")
    assert loop.time() - started < 2
    assert isinstance(events[-1], ErrorEvent) and events[-1].code == "deadline_exceeded" and events[-1].retryable
    assert not any(isinstance(e, DoneEvent) for e in events)
    assert run.partial == "thinking " and run.usage.completion_tokens > 0  # what was produced is kept and billed


async def test_llm_errors_become_one_error_event():
    provider = ScriptedProvider([tool_call(0, "search", {"query": "penguins"}),
                                 Finish(reason="tool_calls", usage=Usage(prompt_tokens=50, completion_tokens=5))],
                                LLMUnavailable("the LLM is unavailable after 3 attempt(s): HTTP 503"))
    run, events = await run_agent(Agent(provider, MemoryTools()), "Penguins?")
    assert isinstance(events[-1], ErrorEvent)
    assert events[-1].code == "llm_unavailable" and "3 attempt(s)" in events[-1].message
    assert sum(isinstance(e, ErrorEvent) for e in events) == 1
    assert run.usage.total_tokens == 55  # the failed call got no answer: it costs nothing


async def test_tool_failures_are_reported_to_the_model():
    provider = ScriptedProvider(
        [tool_call(0, "search", "{not json"), tool_call(1, "nope", {}), tool_call(2, "read_document", {"source": 4}),
         tool_call(3, "search", {"query": "x", "collection": "missing"}), tool_call(4, "search", {"query": "explode"}),
         tool_call(5, "search", {"query": ""}), Finish(reason="tool_calls")],
        text("Nothing to go on."),
    )
    _, events = await run_agent(Agent(provider, MemoryTools()), "Penguins?")
    results = [e for e in events if isinstance(e, ToolResultEvent)]
    assert [r.ok for r in results] == [False] * 6
    errors = [r.error for r in results]
    assert "invalid call of search" in errors[0] and "no tool named 'nope'" in errors[1]
    assert "no source [4]" in errors[2] and "no collection named 'missing'" in errors[3]
    assert errors[4] == "the search tool failed unexpectedly" and "invalid call of search" in errors[5]
    tool_messages = [m for m in provider.calls[1]["messages"] if m.role == "tool"]
    assert [json.loads(m.content)["error"] for m in tool_messages] == errors
    assert isinstance(events[-1], DoneEvent) and events[-1].citations == []


async def test_read_document_and_list_collections():
    provider = ScriptedProvider(
        [tool_call(0, "search", {"query": "krill", "k": 1}), Finish(reason="tool_calls")],
        [tool_call(0, "read_document", {"source": 1, "before": 1, "after": 1}), tool_call(1, "list_collections", {}),
         Finish(reason="tool_calls")],
        text("They breed in colonies [2]."),
    )
    tools = MemoryTools()
    _, events = await run_agent(Agent(provider, tools), "Penguins?")
    assert tools.calls == [("search", "krill"), ("read_document", 101)]
    read, listing = [e for e in events if isinstance(e, ToolResultEvent)][1:]
    assert [(s.n, s.chunk_id) for s in read.sources] == [(2, 100), (1, 101), (3, 102)]  # known chunks keep their n
    assert listing.ok and listing.sources == []
    messages = provider.calls[2]["messages"]
    assert json.loads(messages[-1].content) == {"collections": [{"name": "nature", "description": "animals and ice"}]}
    assert messages[-2].content.startswith("Passages around source [1]")
    assert [s.n for s in parse_sources(messages[-2].content)] == [2, 1, 3]
    citation = next(e for e in events if isinstance(e, CitationEvent))
    assert citation.chunk_id == 100 and citation.quote == "They breed in large colonies."


async def test_calls_per_step_are_capped():
    calls = [tool_call(i, "search", {"query": f"q{i}"}) for i in range(10)]
    provider = ScriptedProvider([*calls, Finish(reason="tool_calls")], text("Done."))
    run, _ = await run_agent(Agent(provider, MemoryTools(), AgentLimits(max_calls_per_step=3)), "Penguins?")
    assert len(run.tool_calls) == 3
    assistant = provider.calls[1]["messages"][-4]
    assert assistant.role == "assistant" and len(assistant.tool_calls) == 3  # every listed call has its answer


async def test_history_precedes_the_question_and_cancellation_keeps_the_partial_answer():
    provider = ScriptedProvider([TextDelta("Half an "), TextDelta("answer"), "hang"])
    history = [Message(role="user", content="Earlier?"), Message(role="assistant", content="Earlier answer.")]
    run = Agent(provider, MemoryTools(), instructions="Answer in French.").start("Penguins?", history)
    events: list[Any] = []
    two_tokens = asyncio.Event()

    def emit(event: Any) -> None:
        events.append(event)
        if sum(isinstance(e, TokenEvent) for e in events) == 2:
            two_tokens.set()

    task = asyncio.create_task(run.execute(emit))
    await asyncio.wait_for(two_tokens.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert run.partial == "Half an answer" and run.usage.completion_tokens > 0
    sent = provider.calls[0]["messages"]
    assert [m.role for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[0].content.endswith("Answer in French.") and sent[-1].content == "Penguins?"


def test_strip_citations():
    assert strip_citations("Krill [1]. Fish [2, 3][4] and more [12].") == "Krill. Fish and more."
