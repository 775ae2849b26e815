"""The OpenAI-compatible chat provider against the simulated LLM server (perf/simllm.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from core.errors import BadRequest, Unavailable
from perf.simllm import Failure, Reply, SimLLM, ToolCallSpec
from rag.agent.protocol import TOOL_SPECS
from rag.llm import (
    LLMMisconfigured,
    LLMProvider,
    LLMRejected,
    LLMTimeout,
    LLMUnavailable,
    Message,
    OpenAIChatProvider,
    TextDelta,
    collect,
    make_llm_provider,
)
from rag.llm.offline import OfflineProvider
from tests.rag.test_embedders import make_settings

KEY = "sk-test-SECRET-0123456789abcdef"
QUESTION = [Message(role="user", content="hello?")]


@pytest.fixture
async def sim():
    async with SimLLM(ttft_ms=5, tokens_per_s=1000, tokens=8, api_key=KEY) as server:
        yield server


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
async def provider(sim, sleeps):
    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    llm = OpenAIChatProvider(base_url=sim.base_url, model="sim-llm", api_key=KEY, max_retries=2,
                             read_timeout_s=5, sleep=fake_sleep)
    yield llm
    await llm.aclose()


async def test_streams_text_and_reports_usage(provider, sim):
    assert isinstance(provider, LLMProvider)
    sim.reply_next(Reply(text="Penguins live in Antarctica [1]."))
    deltas = [d async for d in provider.stream(QUESTION, max_tokens=50)]
    texts = [d.text for d in deltas if isinstance(d, TextDelta)]
    # Five tokens; those that arrive in one read come as one delta.
    assert "".join(texts) == "Penguins live in Antarctica [1]." and 1 <= len(texts) <= 5
    finish = deltas[-1]
    assert finish.reason == "stop" and finish.usage.completion_tokens == 5 and finish.usage.prompt_tokens > 0
    body = sim.chat_requests[0].json()
    assert body == {"model": "sim-llm", "messages": [{"role": "user", "content": "hello?"}], "stream": True,
                    "stream_options": {"include_usage": True}, "max_tokens": 50}


async def test_tool_calls_are_assembled_from_fragments(provider, sim):
    sim.reply_next(Reply(tool_calls=[ToolCallSpec("search", {"query": "emperor penguins huddle", "k": 4}),
                                     ToolCallSpec("list_collections", {})]))
    completion = await collect(provider, QUESTION, tools=TOOL_SPECS)
    assert completion.finish_reason == "tool_calls" and completion.text == ""
    assert [(c.name, c.arguments) for c in completion.tool_calls] == [
        ("search", '{"query": "emperor penguins huddle", "k": 4}'), ("list_collections", "{}")]
    assert completion.tool_calls[0].id != completion.tool_calls[1].id
    body = sim.chat_requests[0].json()
    assert body["tool_choice"] == "auto"
    assert body["tools"][0] == {"type": "function", "function": {
        "name": "search", "description": TOOL_SPECS[0].description, "parameters": TOOL_SPECS[0].parameters}}
    # The assistant's tool calls and the tool's answer go back in OpenAI's wire format.
    follow_up = [*QUESTION, Message(role="assistant", tool_calls=completion.tool_calls),
                 Message(role="tool", tool_call_id=completion.tool_calls[0].id, content='{"sources": []}')]
    await collect(provider, follow_up, tools=TOOL_SPECS, tool_choice="none")
    sent = sim.chat_requests[1].json()
    assert sent["tool_choice"] == "none"
    assert sent["messages"][1]["tool_calls"][0] == {
        "id": completion.tool_calls[0].id, "type": "function",
        "function": {"name": "search", "arguments": completion.tool_calls[0].arguments}}
    assert sent["messages"][2] == {"role": "tool", "content": '{"sources": []}',
                                   "tool_call_id": completion.tool_calls[0].id}


async def test_429_and_5xx_are_retried_honouring_retry_after(provider, sim, sleeps):
    sim.fail_next(Failure(429, retry_after="7"), Failure(503))
    completion = await collect(provider, QUESTION)
    assert completion.text and len(sim.chat_requests) == 3
    assert sleeps[0] == 7.0 and 0.25 <= sleeps[1] <= 1.0  # Retry-After, then backoff with jitter


async def test_retries_run_out_without_leaking_the_key(provider, sim, sleeps, caplog):
    sim.fail_next(*[Failure(500, message=f"bad key {KEY}")] * 3)
    with caplog.at_level(logging.DEBUG), pytest.raises(Unavailable) as info:
        await collect(provider, QUESTION)
    assert isinstance(info.value, LLMUnavailable) and info.value.code == "llm_unavailable"
    assert "after 3 attempt(s)" in info.value.detail
    assert KEY not in info.value.detail and KEY not in caplog.text and KEY not in repr(provider)
    assert len(sleeps) == 2 and len(sim.chat_requests) == 3


async def test_client_errors_are_not_retried(provider, sim):
    sim.fail_next(Failure(400, message="context length exceeded"))
    with pytest.raises(BadRequest) as info:
        await collect(provider, QUESTION)
    assert isinstance(info.value, LLMRejected) and "context length exceeded" in info.value.detail
    wrong_key = OpenAIChatProvider(base_url=sim.base_url, model="sim-llm", api_key="sk-wrong-0123456789")
    with pytest.raises(LLMMisconfigured) as misconfigured:
        await collect(wrong_key, QUESTION)
    await wrong_key.aclose()
    assert "401" in misconfigured.value.detail and "sk-wrong-0123456789" not in misconfigured.value.detail
    assert len(sim.chat_requests) == 2


async def test_a_stall_before_the_first_byte_is_a_timeout(sim):
    llm = OpenAIChatProvider(base_url=sim.base_url, model="m", api_key=KEY, read_timeout_s=0.2, max_retries=0)
    sim.fail_next(Failure.stall(10))
    with pytest.raises(LLMTimeout):
        await collect(llm, QUESTION)
    await llm.aclose()
    await sim.wait_for(lambda: sim.cancelled, within_s=2)


async def test_a_stall_mid_stream_is_not_retried(sim):
    llm = OpenAIChatProvider(base_url=sim.base_url, model="m", api_key=KEY, read_timeout_s=1.0, max_retries=3)
    sim.reply_next(Reply(text="a b c d", stall_after_tokens=2, stall_s=20))
    seen = []
    with pytest.raises(LLMTimeout):
        async for delta in llm.stream(QUESTION):
            seen.append(delta)
    await llm.aclose()
    # Two tokens came (in one delta or two, as they were read) and no retry repeated them.
    assert "".join(d.text for d in seen) == "a b " and len(sim.chat_requests) == 1


async def test_cancelling_closes_the_http_stream_at_once():
    async with SimLLM(ttft_ms=5, tokens_per_s=4, tokens=100, api_key=KEY) as slow:
        llm = OpenAIChatProvider(base_url=slow.base_url, model="m", api_key=KEY)
        first = asyncio.Event()

        async def consume() -> None:
            async for delta in llm.stream(QUESTION):
                if isinstance(delta, TextDelta):
                    first.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), 5)
        task.cancel()
        await slow.wait_for(lambda: slow.cancelled, within_s=1)
        assert slow.chat_requests[0].tokens_sent < 50  # of 100
        await llm.aclose()


@contextlib.asynccontextmanager
async def fixed_llm(body: bytes):
    """A local HTTP/1.1 server answering every request with `body` as a 200 event stream."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    llm = OpenAIChatProvider(base_url=f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", model="m",
                             max_retries=0)
    try:
        yield llm
    finally:
        await llm.aclose()
        server.close()


async def test_malformed_stream_is_unavailable():
    async with fixed_llm(b"data: {not json\n\n") as llm:
        with pytest.raises(LLMUnavailable, match="malformed"):
            await collect(llm, QUESTION)


@pytest.mark.parametrize("tail", [b"", b"\n"])
async def test_a_stream_line_without_end_is_cut_off(tail):
    """A line is never buffered beyond 1 MiB, whether or not a line break came before it."""
    async with fixed_llm(b": ok\n" * bool(tail) + b"data: " + b"x" * (2 * 1024 * 1024) + tail) as llm:
        with pytest.raises(LLMUnavailable, match="longer than 1 MiB"):
            await collect(llm, QUESTION)


def test_make_llm_provider_follows_settings():
    assert isinstance(make_llm_provider(make_settings()), OfflineProvider)
    llm = make_llm_provider(make_settings(llm_provider="openai", llm_base_url="http://x/v1", llm_api_key=KEY,
                                          llm_model="m"))
    assert isinstance(llm, OpenAIChatProvider) and llm.model == "m" and KEY not in repr(llm)


async def test_simllm_parses_large_bodies_it_does_not_keep_and_bounds_its_log():
    async with SimLLM(ttft_ms=1, tokens_per_s=10_000, tokens=3, record_bodies=False, max_records=2) as server:
        llm = OpenAIChatProvider(base_url=server.base_url, model="m")
        big = [Message(role="user", content="x" * 20_000)]  # an agent's second call easily exceeds 4 KiB
        for _ in range(3):
            assert (await collect(llm, big)).finish_reason == "stop"
        await llm.aclose()
        assert len(server.requests) == 2 and all(r.body == b"" for r in server.requests)
        assert server.stats() == {"requests": 3, "active": 0, "completed": 3, "cancelled": 0, "failed": 0}
