"""Chat with the OpenAI-compatible provider against the simulated LLM (perf/simllm.py):
tool calling, history, retries, clean errors, deadline, disconnects and the chat limits."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import date

import msgspec
import pytest

from api.chat.limits import StreamSlots, limits_redis
from core.errors import Unavailable
from perf.simllm import Failure, Reply, SimLLM, ToolCallSpec
from rag.agent.protocol import parse_sources
from storage.repositories.usage import add_usage, month_of, month_usage
from storage.tenancy import tenant_tx
from tests.api.chat_helpers import CORPUS, chat_app, drive_asgi, load_corpus, parse_sse
from tests.api.helpers import assert_problem

LLM_KEY = "sk-sim-SECRET-0123456789abcdef"


@pytest.fixture
async def sim():
    async with SimLLM(ttft_ms=10, tokens_per_s=2000, tokens=12) as server:
        yield server


def llm_settings(settings, sim, **overrides):
    values = {"llm_provider": "openai", "llm_base_url": sim.base_url, "llm_model": "sim-llm", "llm_api_key": LLM_KEY,
              "llm_max_retries": 2, "llm_read_timeout_s": 10.0, **overrides}
    return msgspec.structs.replace(settings, **values)


async def _chat(capp, headers, message, **extra):
    return await capp.post("/v1/chat", json={"message": message, **extra}, headers=headers)


async def _slots_in_use(capp, tenant_id) -> int:
    return await StreamSlots(capp.app.state.chat_redis, 1, 60).in_use(tenant_id)


async def test_tool_calls_then_an_answer_with_citations(settings, sim, make_tenant, run_jobs):
    async with chat_app(llm_settings(settings, sim)) as capp:
        t = await make_tenant()
        _, docs = await load_corpus(capp, t.headers, run_jobs)
        sim.reply_next(Reply(tool_calls=[ToolCallSpec("search", {"query": "where penguins live", "k": 3})]),
                       Reply(text="Penguins live along the coasts of Antarctica [1]. Also [9]."))
        r = await _chat(capp, t.headers, "Where do penguins live?", stream=True)
        assert r.status_code == 200, r.text
        events = parse_sse(r.text)
        names = [e.event for e in events]
        assert names[:4] == ["step", "tool_call", "tool_result", "step"]
        assert names[-2:] == ["citation", "done"] and set(names[4:-2]) == {"token"}
        assert events[1].data["arguments"] == {"query": "where penguins live", "k": 3}
        sources = events[2].data["sources"]
        assert len(sources) == 3 and sources[0]["n"] == 1
        citation = events[-2].data
        assert citation["n"] == 1 and citation["chunk_id"] == sources[0]["chunk_id"]  # [9] named no source
        assert citation["document_id"] == docs["Penguins"] and citation["quote"] in CORPUS["Penguins"]
        done = events[-1].data
        assert done["answer"] == "Penguins live along the coasts of Antarctica [1]. Also [9]."
        assert done["model"] == "sim-llm" and done["steps"] == 2

        first, second = (r.json() for r in sim.chat_requests)
        assert sim.chat_requests[0].headers["authorization"] == f"Bearer {LLM_KEY}"
        assert first["model"] == "sim-llm" and first["stream"] is True and first["tool_choice"] == "auto"
        assert [tool["function"]["name"] for tool in first["tools"]] == ["search", "read_document",
                                                                         "list_collections"]
        assert first["messages"][0]["role"] == "system" and first["messages"][-1] == {
            "role": "user", "content": "Where do penguins live?"}
        assistant, tool = second["messages"][-2:]
        assert assistant["tool_calls"][0]["function"]["name"] == "search"
        assert tool["role"] == "tool" and tool["tool_call_id"] == assistant["tool_calls"][0]["id"]
        observation = parse_sources(tool["content"])
        assert observation[0].n == 1 and "Antarctica" in observation[0].text
        # Usage as the provider reported it (stream_options.include_usage).
        assert done["usage"]["completion_tokens"] == sum(r.tokens_sent for r in sim.chat_requests)


async def test_earlier_turns_reach_the_llm(settings, sim, make_tenant, run_jobs):
    async with chat_app(llm_settings(settings, sim)) as capp:
        t = await make_tenant()
        await load_corpus(capp, t.headers, run_jobs)
        r = await capp.post("/v1/conversations", json={}, headers=t.headers)
        conv = r.json()["id"]
        sim.reply_next(Reply(text="They live in Antarctica [1]."), Reply(text="Krill [1]."))
        for question in ("Where do penguins live?", "What do they eat?"):
            r = await capp.post(f"/v1/conversations/{conv}/messages", json={"content": question}, headers=t.headers)
            assert r.status_code == 200, r.text
        messages = sim.chat_requests[-1].json()["messages"]
        assert [(m["role"], m["content"]) for m in messages[1:]] == [
            ("user", "Where do penguins live?"),
            ("assistant", "They live in Antarctica."),  # the old [n] markers are stripped
            ("user", "What do they eat?"),
        ]


async def test_429_and_500_are_retried(settings, sim, make_tenant):
    async with chat_app(llm_settings(settings, sim)) as capp:
        t = await make_tenant()
        sim.fail_next(Failure(429, retry_after="0"), Failure(500, retry_after="0"))
        sim.reply_next(Reply(text="Fine after all."))
        r = await _chat(capp, t.headers, "Hello?")
        assert r.status_code == 200, r.text
        assert r.json()["answer"] == "Fine after all."
        assert [q.outcome for q in sim.chat_requests] == ["failed", "failed", "completed"]


async def test_an_llm_that_keeps_failing_ends_in_a_clean_error_event(settings, sim, make_tenant, caplog):
    async with chat_app(llm_settings(settings, sim)) as capp:
        t = await make_tenant()
        conv = (await capp.post("/v1/conversations", json={}, headers=t.headers)).json()["id"]
        sim.fail_next(*[Failure(500, retry_after="0", message=f"upstream broke for {LLM_KEY}")] * 3)
        r = await capp.post(f"/v1/conversations/{conv}/messages", json={"content": "Hello?", "stream": True},
                            headers=t.headers)
        assert r.status_code == 200
        events = parse_sse(r.text)
        assert [e.event for e in events] == ["step", "error"]
        error = events[-1].data
        assert error["code"] == "llm_unavailable" and error["retryable"] is True
        assert "3 attempt(s)" in error["message"] and "Traceback" not in r.text
        assert LLM_KEY not in r.text and LLM_KEY not in caplog.text
        assert len(sim.chat_requests) == 3

        stored = (await capp.get(f"/v1/conversations/{conv}", headers=t.headers)).json()["messages"]
        assert [m["status"] for m in stored] == ["complete", "error"]
        assert stored[1]["error"]["code"] == "llm_unavailable"
        assert await _slots_in_use(capp, t.id) == 0

        sim.fail_next(*[Failure(503, retry_after="0")] * 3)
        body = assert_problem(await _chat(capp, t.headers, "Hello?"), 503)
        assert body["code"] == "llm_unavailable"


async def test_a_stalled_llm_hits_the_deadline(settings, sim, make_tenant):
    async with chat_app(llm_settings(settings, sim, agent_deadline_s=1.0, llm_read_timeout_s=30.0)) as capp:
        t = await make_tenant()
        sim.fail_next(Failure.stall(20))
        started = time.perf_counter()
        r = await _chat(capp, t.headers, "Hello?", stream=True)
        elapsed = time.perf_counter() - started
        events = parse_sse(r.text)
        assert [e.event for e in events] == ["step", "error"]
        assert events[-1].data["code"] == "deadline_exceeded"
        assert 0.9 < elapsed < 15  # the stall lasts 20 s
        await sim.wait_for(lambda: sim.cancelled, within_s=5)  # the LLM request was closed, not left hanging


async def test_a_stream_that_stalls_mid_answer_times_out(settings, sim, make_tenant):
    async with chat_app(llm_settings(settings, sim, llm_read_timeout_s=1.0)) as capp:
        t = await make_tenant()
        sim.reply_next(Reply(text="one two three four five six", stall_after_tokens=2, stall_s=10))
        r = await _chat(capp, t.headers, "Count?", stream=True)
        events = parse_sse(r.text)
        names = [e.event for e in events]
        assert names[:2] == ["step", "token"] and set(names[1:-1]) == {"token"} and names[-1] == "error"
        assert "".join(e.data["text"] for e in events if e.event == "token") == "one two "  # two tokens
        assert events[-1].data["code"] == "llm_timeout"
        assert len(sim.chat_requests) == 1  # tokens were out already: no retry that would repeat them


async def test_disconnect_cancels_the_agent_and_the_llm_call(settings, make_tenant, pool):
    async with SimLLM(ttft_ms=10, tokens_per_s=5, tokens=100) as slow, \
            chat_app(llm_settings(settings, slow)) as capp:
        t = await make_tenant()
        conv = (await capp.post("/v1/conversations", json={}, headers=t.headers)).json()["id"]
        app_pool = capp.app.state.pool
        started = time.perf_counter()
        exchange = await drive_asgi(capp.app, "POST", f"/v1/conversations/{conv}/messages", t.headers,
                                    {"content": "Tell me everything.", "stream": True},
                                    hang_up_when=lambda body: body.count(b"event: token") >= 2)
        assert exchange.status == 200
        assert time.perf_counter() - started < 12  # the whole answer would take 20 s
        await slow.wait_for(lambda: slow.cancelled, within_s=2)
        (request,) = slow.chat_requests
        assert request.outcome == "cancelled" and 2 <= request.tokens_sent < 50  # of 100
        stored = (await capp.get(f"/v1/conversations/{conv}", headers=t.headers)).json()["messages"]
        assert [m["status"] for m in stored] == ["complete", "cancelled"]
        assert stored[1]["content"].startswith("the documents")  # the part streamed before the hang-up
        assert await _slots_in_use(capp, t.id) == 0
        assert app_pool.get_idle_size() == app_pool.get_size()  # no connection held by the dead chat


@pytest.mark.parametrize("facade", [False, True], ids=["sendMessage", "chat-completions"])
async def test_disconnect_cancels_a_non_streaming_chat(settings, make_tenant, facade):
    """`stream: false`: the client hangs up while the LLM is still thinking (time to first token
    30 s): the agent and the LLM call are cancelled at once, the connection goes back to the pool."""
    async with SimLLM(ttft_ms=30_000, tokens_per_s=100, tokens=10) as slow, \
            chat_app(llm_settings(settings, slow, llm_read_timeout_s=60.0)) as capp:
        t = await make_tenant()
        if facade:
            path, body = "/v1/chat/completions", {"model": "quarry", "messages": [{"role": "user", "content": "Hi?"}]}
        else:
            conv = (await capp.post("/v1/conversations", json={}, headers=t.headers)).json()["id"]
            path, body = f"/v1/conversations/{conv}/messages", {"content": "Tell me everything.", "stream": False}
        app_pool = capp.app.state.pool
        hang_up = asyncio.Event()
        call = asyncio.create_task(drive_asgi(capp.app, "POST", path, t.headers, body, hang_up=hang_up))
        await slow.wait_for(lambda: slow.chat_requests, within_s=5)  # the LLM is thinking
        hung_up = time.perf_counter()
        hang_up.set()
        exchange = await call
        assert time.perf_counter() - hung_up < 5
        assert exchange.status == 499  # nobody reads it: what the metrics and logs show
        await slow.wait_for(lambda: slow.cancelled, within_s=2)
        (request,) = slow.chat_requests
        assert request.outcome == "cancelled" and request.tokens_sent == 0
        if not facade:
            stored = (await capp.get(f"/v1/conversations/{conv}", headers=t.headers)).json()["messages"]
            assert [(m["role"], m["status"]) for m in stored] == [("user", "complete"), ("assistant", "cancelled")]
        assert await _slots_in_use(capp, t.id) == 0
        assert app_pool.get_idle_size() == app_pool.get_size()  # no connection held by the dead chat


async def test_concurrent_streams_per_tenant_are_capped(settings, make_tenant):
    async with SimLLM(ttft_ms=10, tokens_per_s=1000, tokens=5) as slow, \
            chat_app(llm_settings(settings, slow, chat_max_streams_per_tenant=2)) as capp:
        t, other = await make_tenant(), await make_tenant()
        hold = asyncio.Event()  # the two chats stay open until the checks below are done
        slow.reply_next(*[Reply(text="still going here", hold=hold)] * 2)
        running = [asyncio.create_task(_chat(capp, t.headers, f"q{i}", stream=True)) for i in range(2)]
        await slow.wait_for(lambda: sum(r.tokens_sent > 0 for r in slow.chat_requests) == 2, within_s=10)
        body = assert_problem(await _chat(capp, t.headers, "one too many"), 429)
        assert "2 chats" in body["detail"]
        rejected = await _chat(capp, t.headers, "one too many", stream=True)
        assert rejected.status_code == 429 and int(rejected.headers["retry-after"]) >= 1
        assert (await _chat(capp, other.headers, "another tenant")).status_code == 200
        hold.set()
        for done in await asyncio.gather(*running):
            assert parse_sse(done.text)[-1].event == "done"
        assert await _slots_in_use(capp, t.id) == 0
        assert (await _chat(capp, t.headers, "room again")).status_code == 200

        # Released on errors too.
        slow.fail_next(*[Failure(500, retry_after="0")] * 6)
        for _ in range(2):
            assert (await _chat(capp, t.headers, "fails", stream=True)).status_code == 200
        assert await _slots_in_use(capp, t.id) == 0

        # A slot a crashed worker left behind expires by itself.
        slots = StreamSlots(capp.app.state.chat_redis, 2, 60)
        hour_ago_ms = (time.time() - 3600) * 1000  # scores are Redis's clock in ms (storage.semaphore)
        await capp.app.state.chat_redis.zadd(slots.key(t.id), {"crashed-1": hour_ago_ms, "crashed-2": hour_ago_ms})
        assert (await _chat(capp, t.headers, "after a crash")).status_code == 200


async def test_monthly_token_budget(settings, sim, make_tenant, pool):
    async with chat_app(llm_settings(settings, sim, chat_monthly_token_budget=5000)) as capp:
        t, other = await make_tenant(), await make_tenant()
        r = await _chat(capp, t.headers, "Hello?")
        assert r.status_code == 200, r.text
        spent = r.json()["usage"]["total_tokens"]
        recorder = capp.app.state.chat_usage
        assert recorder.pending(t.id, month_of()) == spent > 0  # counted, written with the next flush

        async with tenant_tx(pool, t.id) as conn:
            await add_usage(conn, t.id, month_of(), 5000 - spent, 0)  # with the pending tokens: at the budget
        body = assert_problem(await _chat(capp, t.headers, "Hello again?"), 429)
        assert body["budget"] == 5000 and body["used"] == 5000
        await recorder.flush()
        async with tenant_tx(pool, t.id, readonly=True) as conn:
            usage = await month_usage(conn, month_of())
        assert usage.total_tokens == 5000 and usage.requests == 2 and recorder.pending(t.id, month_of()) == 0
        assert_problem(await _chat(capp, t.headers, "Hello again?"), 429)
        response = await _chat(capp, t.headers, "Hello again?", stream=True)
        retry_after = int(response.headers["retry-after"])
        assert 0 < retry_after <= 31 * 24 * 3600
        assert await _slots_in_use(capp, t.id) == 0  # the rejected request gave its slot back

        assert (await _chat(capp, other.headers, "Hello?")).status_code == 200  # per tenant
        async with tenant_tx(pool, t.id) as conn:  # last month's usage does not count
            await add_usage(conn, t.id, date(2000, 1, 1), 10**9, 0)
            assert (await month_usage(conn, month_of())).total_tokens == 5000


async def test_usage_is_batched_per_tenant_and_month(pool, make_tenant):
    from api.chat.usage import UsageRecorder

    a, b = await make_tenant(), await make_tenant()
    recorder = UsageRecorder(pool, interval_s=0.05)
    for _ in range(3):
        recorder.add(a.id, 100, 10)
    recorder.add(b.id, 7, 1)
    assert recorder.pending(a.id, month_of()) == 330 and recorder.pending(b.id, month_of()) == 8
    for _ in range(250):  # the timer flushes by itself
        if not recorder.pending(a.id, month_of()):
            break
        await asyncio.sleep(0.02)
    for tenant, expected in ((a, (300, 30, 3)), (b, (7, 1, 1))):
        async with tenant_tx(pool, tenant.id, readonly=True) as conn:
            usage = await month_usage(conn, month_of())
        assert (usage.prompt_tokens, usage.completion_tokens, usage.requests) == expected
    await recorder.aclose()


async def test_stream_slots_reload_their_script_when_redis_lost_it():
    from redis.exceptions import NoScriptError

    class ForgetfulRedis:  # a Redis that restarted (or ran SCRIPT FLUSH) since the script was sent
        def __init__(self) -> None:
            self.calls: list[str] = []

        async def evalsha(self, *args):
            self.calls.append("evalsha")
            raise NoScriptError("NOSCRIPT No matching script")

        async def eval(self, *args):
            self.calls.append("eval")
            return [1]

    redis = ForgetfulRedis()
    token = await StreamSlots(redis, cap=1, ttl_s=60).acquire(uuid.uuid4())
    assert token and redis.calls == ["evalsha", "eval"]


async def test_stream_slots_batch_concurrent_calls_and_keep_the_cap(settings):
    """Acquisitions and releases made together go to Redis in one call, releases first; the
    cap holds exactly; a place taken for a chat cancelled meanwhile is given back."""
    redis = limits_redis(settings.redis_url)
    try:
        slots, tenant = StreamSlots(redis, cap=5, ttl_s=60), uuid.uuid4()
        outcomes = await asyncio.gather(*(slots.acquire(tenant) for _ in range(20)), return_exceptions=True)
        tokens = [o for o in outcomes if isinstance(o, str)]
        refused = [o for o in outcomes if not isinstance(o, str)]
        assert len(tokens) == 5 and await slots.in_use(tenant) == 5
        assert all(getattr(e, "status", None) == 429 for e in refused)
        assert slots.calls < 5  # 20 acquisitions, not 20 calls

        # Five releases and five acquisitions together: the freed places are taken in the same call.
        calls = slots.calls
        again = await asyncio.gather(*(slots.release(tenant, t) for t in tokens),
                                     *(slots.acquire(tenant) for _ in range(5)))
        assert all(isinstance(t, str) for t in again[5:]) and slots.calls - calls <= 2
        assert await slots.in_use(tenant) == 5
        await asyncio.gather(*(slots.release(tenant, t) for t in again[5:]))

        cancelled = asyncio.create_task(slots.acquire(tenant))
        await asyncio.sleep(0)  # queued; the call leaves on the next turn of the loop
        await asyncio.sleep(0)
        cancelled.cancel()
        for _ in range(100):
            if await slots.in_use(tenant) == 0:
                break
            await asyncio.sleep(0.01)
        assert await slots.in_use(tenant) == 0
    finally:
        await redis.aclose()


async def test_stream_slots_unavailable_redis_is_a_503():
    redis = limits_redis("redis://127.0.0.1:9/0")  # nothing listens on the discard port
    try:
        with pytest.raises(Unavailable):
            await StreamSlots(redis, cap=1, ttl_s=60).acquire(uuid.uuid4())
    finally:
        await redis.aclose()
