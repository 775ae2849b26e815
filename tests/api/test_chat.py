"""Chat end to end with the offline provider (the default): real Postgres, Valkey and MiniLM."""

from __future__ import annotations

import re
from uuid import UUID

import pytest

from api.chat.tools import TenantToolbox
from core.errors import NotFound
from rag.llm.offline import NOT_FOUND
from storage.tenancy import tenant_tx
from tests.api.chat_helpers import CORPUS, chat_app, load_corpus, parse_sse
from tests.api.helpers import assert_problem
from tests.ingest_helpers import new_collection, upload_text


@pytest.fixture(scope="module")
async def capp(settings):
    async with chat_app(settings) as app:
        yield app


async def _conversation(capp, headers, **body) -> str:
    r = await capp.post("/v1/conversations", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def _ask(capp, headers, conversation_id, content, **extra):
    r = await capp.post(f"/v1/conversations/{conversation_id}/messages", json={"content": content, **extra},
                        headers=headers)
    assert r.status_code == 200, r.text
    return r


async def _one_shot(capp, headers, message, **extra):
    r = await capp.post("/v1/chat", json={"message": message, **extra}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


async def test_stream_event_order_and_shapes(capp, make_tenant, run_jobs):
    t = await make_tenant()
    _, docs = await load_corpus(capp, t.headers, run_jobs)
    conv = await _conversation(capp, t.headers)
    r = await _ask(capp, t.headers, conv, "Where do penguins live?", stream=True)
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache"
    events = parse_sse(r.text)
    names = " ".join(e.event for e in events)
    assert re.fullmatch(r"step( tool_call)+( tool_result)+ step( token)+( citation)+ done", names), names
    assert all(e.data["type"] == e.event for e in events if e.event != "done")

    step, call, result = events[0].data, events[1].data, events[2].data
    assert step == {"type": "step", "step": 1, "max_steps": 4}
    assert call["name"] == "search" and call["step"] == 1 and call["arguments"]["query"]
    assert result["id"] == call["id"] and result["ok"] is True and result["error"] is None
    assert result["sources"] and {"n", "chunk_id", "document_id", "title"} == result["sources"][0].keys()
    assert [s["n"] for s in result["sources"]] == list(range(1, len(result["sources"]) + 1))

    tokens = [e.data for e in events if e.event == "token"]
    assert all(set(tok) == {"type", "text", "step"} and tok["step"] == 2 for tok in tokens)
    citations = [e.data for e in events if e.event == "citation"]
    done = events[-1].data
    assert "".join(tok["text"] for tok in tokens) == done["answer"]
    assert "Antarctica" in done["answer"]
    assert done["citations"] == citations
    assert {c["title"] for c in citations} == {"Penguins"}
    assert citations[0]["document_id"] == docs["Penguins"]
    assert citations[0]["quote"] in CORPUS["Penguins"] and "Antarctica" in citations[0]["quote"]
    assert done["conversation_id"] == conv and UUID(done["message_id"])
    assert done["finish_reason"] == "stop" and done["steps"] == 2 and done["model"] == "quarry-offline"
    usage = done["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert done["latency_ms"] >= 0
    assert [c["name"] for c in done["tool_calls"]] == ["search"]


async def test_answer_is_stored_with_citations_tool_calls_tokens_and_latency(capp, make_tenant, run_jobs):
    t = await make_tenant()
    await load_corpus(capp, t.headers, run_jobs)
    conv = await _conversation(capp, t.headers)
    answer = (await _ask(capp, t.headers, conv, "What do glaciers carve?")).json()
    assert "U-shaped valleys" in answer["answer"]

    r = await capp.get(f"/v1/conversations/{conv}", headers=t.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["title"] == "What do glaciers carve?" and body["has_more"] is False
    user, assistant = body["messages"]
    assert (user["role"], user["content"]) == ("user", "What do glaciers carve?")
    assert assistant["id"] == answer["message_id"] and assistant["role"] == "assistant"
    assert assistant["content"] == answer["answer"] and assistant["status"] == "complete"
    assert assistant["citations"] == answer["citations"] and assistant["citations"][0]["title"] == "Glaciers"
    assert assistant["tool_calls"][0]["name"] == "search" and assistant["tool_calls"][0]["ok"] is True
    assert assistant["tool_calls"][0]["sources"]  # chunk ids the search returned
    assert assistant["prompt_tokens"] == answer["usage"]["prompt_tokens"] > 0
    assert assistant["completion_tokens"] == answer["usage"]["completion_tokens"] > 0
    assert assistant["latency_ms"] == answer["latency_ms"] and assistant["model"] == "quarry-offline"
    assert assistant["finish_reason"] == "stop"


@pytest.mark.parametrize(("question", "fact", "title"), [
    ("Where do penguins live?", "Antarctica", "Penguins"),
    ("What do glaciers carve?", "U-shaped valleys", "Glaciers"),
    ("How long should the sourdough dough proof?", "overnight", "Sourdough"),
    ("Who records the passing ships?", "lighthouse keeper", "Lighthouse"),
    ("From how far away is the lighthouse lamp visible?", "30 kilometres", "Lighthouse"),
    ("What are moraines?", "ridges of rock debris", "Glaciers"),
])
async def test_extractive_answer_contains_the_expected_fact(capp, make_tenant, run_jobs, question, fact, title):
    t = await make_tenant()
    await load_corpus(capp, t.headers, run_jobs)
    answer = await _one_shot(capp, t.headers, question)
    assert fact in answer["answer"], answer["answer"]
    assert not answer["answer"].startswith(NOT_FOUND)
    assert answer["citations"] and answer["citations"][0]["title"] == title
    assert re.search(r"\[\d+\]", answer["answer"])


async def test_multi_part_question_runs_several_retrievals(capp, make_tenant, run_jobs):
    t = await make_tenant()
    await load_corpus(capp, t.headers, run_jobs)
    answer = await _one_shot(capp, t.headers, "What do penguins eat, and what are moraines?")
    searches = [c for c in answer["tool_calls"] if c["name"] == "search"]
    assert len(searches) == 2 and all(c["step"] == 1 for c in searches)
    assert "krill" in answer["answer"] and "ridges of rock debris" in answer["answer"]
    assert {c["title"] for c in answer["citations"]} == {"Penguins", "Glaciers"}


async def test_says_not_found_when_the_documents_do_not_answer(capp, make_tenant, run_jobs):
    t = await make_tenant()
    await load_corpus(capp, t.headers, run_jobs)
    answer = await _one_shot(capp, t.headers, "What is the boiling point of mercury?")
    assert answer["answer"].startswith(NOT_FOUND), answer["answer"]
    assert answer["citations"] == []
    # A weak first retrieval gets a second, reformulated one before giving up.
    assert [c["step"] for c in answer["tool_calls"]] == [1, 2]

    mixed = await _one_shot(capp, t.headers, "Where do penguins live? What is the capital of Peru?")
    assert "Antarctica" in mixed["answer"]
    assert f"{NOT_FOUND} anything in the documents about \u201cWhat is the capital of Peru\u201d" in mixed["answer"]
    assert {c["title"] for c in mixed["citations"]} == {"Penguins"}


async def test_follow_up_questions_use_the_conversation(capp, make_tenant, run_jobs):
    t = await make_tenant()
    corpus = {**CORPUS, "Albatrosses": "Albatrosses eat squid and fish snatched from the ocean surface at night."}
    await load_corpus(capp, t.headers, run_jobs, corpus=corpus)
    conv = await _conversation(capp, t.headers)
    first = (await _ask(capp, t.headers, conv, "Where do penguins live?")).json()
    assert "Antarctica" in first["answer"]
    follow_up = (await _ask(capp, t.headers, conv, "What do they eat?")).json()
    query = follow_up["tool_calls"][0]["arguments"]
    assert "penguins" in query.lower()  # the earlier turn's topic shaped the search
    assert "krill" in follow_up["answer"], follow_up["answer"]
    assert {c["title"] for c in follow_up["citations"]} == {"Penguins"}

    # One-shot chat gets the same from the history it is given.
    history = [{"role": "user", "content": "Tell me about glaciers."},
               {"role": "assistant", "content": "Glaciers carve U-shaped valleys [1]."}]
    answer = await _one_shot(capp, t.headers, "What do they leave behind when they retreat?", history=history)
    assert "ridges of rock debris" in answer["answer"], answer["answer"]


async def test_citations_are_the_tenants_own_chunks_never_another_tenants(capp, make_tenant, run_jobs, pool):
    a, b = await make_tenant(), await make_tenant()
    secret = {a.id: "The vault code of Ambergris Shipping is 4471.",
              b.id: "The vault code of Ambergris Shipping is 9086."}
    for tenant in (a, b):
        await load_corpus(capp, tenant.headers, run_jobs, corpus={"Vault": secret[tenant.id], **CORPUS})

    for tenant, other in ((a, b), (b, a)):
        answer = await _one_shot(capp, tenant.headers, "What is the vault code of Ambergris Shipping?")
        own_code, other_code = secret[tenant.id][-5:-1], secret[other.id][-5:-1]
        assert own_code in answer["answer"] and other_code not in answer["answer"]
        cited = [c["chunk_id"] for c in answer["citations"]]
        searched = [i for call in answer["tool_calls"] for i in call["sources"]]
        assert cited and set(cited) <= set(searched)
        async with tenant_tx(pool, tenant.id, readonly=True) as conn:
            rows = await conn.fetch("SELECT id, document_id, text FROM chunks WHERE id = ANY($1)", cited + searched)
        by_id = {r["id"]: r for r in rows}
        assert set(by_id) == set(cited + searched)  # every cited/searched chunk is the tenant's own
        for c in answer["citations"]:
            assert str(by_id[c["chunk_id"]]["document_id"]) == c["document_id"]
            assert c["quote"] in by_id[c["chunk_id"]]["text"]
        async with tenant_tx(pool, other.id, readonly=True) as conn:
            foreign = await conn.fetch("SELECT id FROM chunks WHERE id = ANY($1)", cited + searched)
        assert foreign == []


async def test_tools_cannot_reach_another_tenants_chunks(capp, make_tenant, run_jobs, pool):
    a, b = await make_tenant(), await make_tenant()
    await load_corpus(capp, a.headers, run_jobs)
    await load_corpus(capp, b.headers, run_jobs)
    async with tenant_tx(pool, b.id, readonly=True) as conn:
        b_chunk = await conn.fetchval("SELECT min(id) FROM chunks")
    toolbox_a = TenantToolbox(pool, a.id, capp.app.state.embedder, None, statement_timeout_ms=5000)
    with pytest.raises(NotFound):
        await toolbox_a.read_document(b_chunk, before=2, after=2)
    hits = await toolbox_a.search("Where do penguins live?", k=20, collection=None)
    async with tenant_tx(pool, a.id, readonly=True) as conn:
        own = {r["id"] for r in await conn.fetch("SELECT id FROM chunks")}
    assert hits and {h.chunk_id for h in hits} <= own
    toolbox_b = TenantToolbox(pool, b.id, capp.app.state.embedder, None, statement_timeout_ms=5000)
    neighbours = await toolbox_b.read_document(b_chunk, before=1, after=1)
    assert [p.chunk_id for p in neighbours] == [b_chunk]


async def test_chats_can_be_scoped_to_collections(capp, make_tenant, run_jobs):
    t = await make_tenant()
    animals = await new_collection(capp, t.headers, "animals")
    baking = await new_collection(capp, t.headers, "baking")
    await upload_text(capp, t.headers, animals, CORPUS["Penguins"], title="Penguins")
    await upload_text(capp, t.headers, baking, CORPUS["Sourdough"], title="Sourdough")
    await run_jobs()

    conv = await _conversation(capp, t.headers, collections=[baking])
    scoped = (await _ask(capp, t.headers, conv, "Where do penguins live?")).json()
    assert scoped["answer"].startswith(NOT_FOUND) and scoped["citations"] == []
    override = (await _ask(capp, t.headers, conv, "Where do penguins live?", collections=[animals])).json()
    assert "Antarctica" in override["answer"]

    one_shot = await _one_shot(capp, t.headers, "Where do penguins live?", collections=[baking])
    assert one_shot["answer"].startswith(NOT_FOUND)
    everything = await _one_shot(capp, t.headers, "Where do penguins live?")
    assert "Antarctica" in everything["answer"]


async def test_conversations_list_get_delete(capp, make_tenant, client):
    t, other = await make_tenant(), await make_tenant()
    created = [await _conversation(capp, t.headers, title=f"c{i}") for i in range(5)]
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        r = await capp.get("/v1/conversations", params=params, headers=t.headers)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= 2
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(created))  # newest first, each once

    r = await capp.get(f"/v1/conversations/{created[0]}", headers=t.headers)
    assert r.status_code == 200 and r.json()["messages"] == [] and r.json()["title"] == "c0"
    # Row-level security: another tenant sees nothing of it.
    assert_problem(await capp.get(f"/v1/conversations/{created[0]}", headers=other.headers), 404)
    assert_problem(await capp.post(f"/v1/conversations/{created[0]}/messages", json={"content": "hi"},
                                   headers=other.headers), 404)
    assert_problem(await capp.delete(f"/v1/conversations/{created[0]}", headers=other.headers), 404)
    assert (await capp.get("/v1/conversations", headers=other.headers)).json()["items"] == []

    reader = await capp.post("/v1/admin/keys", json={"role": "reader"}, headers=t.headers)
    reader_headers = {"Authorization": f"Bearer {reader.json()['key']}"}
    assert_problem(await capp.delete(f"/v1/conversations/{created[0]}", headers=reader_headers), 403)
    # Conversations are their creator's: another key of the tenant does not see them either
    # (tests/api/test_conversation_owner.py).
    assert_problem(await capp.get(f"/v1/conversations/{created[0]}", headers=reader_headers), 404)

    r = await capp.delete(f"/v1/conversations/{created[0]}", headers=t.headers)
    assert r.status_code == 204
    assert_problem(await capp.get(f"/v1/conversations/{created[0]}", headers=t.headers), 404)
    assert_problem(await capp.delete(f"/v1/conversations/{created[0]}", headers=t.headers), 404)


async def test_bad_input_is_a_problem_not_a_500(capp, make_tenant):
    t = await make_tenant()
    conv = await _conversation(capp, t.headers)
    url = f"/v1/conversations/{conv}/messages"
    assert_problem(await capp.post(url, json={"content": "   "}, headers=t.headers), 422)
    assert_problem(await capp.post(url, json={}, headers=t.headers), 422)
    assert_problem(await capp.post(url, json={"content": "hi", "bogus": 1}, headers=t.headers), 422)
    assert_problem(await capp.post(url, json={"content": "x" * 20_001}, headers=t.headers), 422)
    assert_problem(await capp.post(url, json={"content": "hi", "stream": "yes"}, headers=t.headers), 422)
    assert_problem(await capp.post(url, json={"content": "hi", "collections": ["nope"]}, headers=t.headers), 422)
    unknown = "00000000-0000-0000-0000-000000000001"
    body = assert_problem(await capp.post(url, json={"content": "hi", "collections": [unknown]}, headers=t.headers),
                          422)
    assert unknown in body["detail"]
    assert_problem(await capp.post(url, content=b"hi", headers={**t.headers, "content-type": "text/plain"}), 415)
    assert_problem(await capp.post(url, content=b"{not json", headers={**t.headers,
                                                                        "content-type": "application/json"}), 400)
    assert_problem(await capp.post(f"/v1/conversations/{unknown}/messages", json={"content": "hi"},
                                   headers=t.headers), 404)
    assert_problem(await capp.post("/v1/conversations", json={"collections": [unknown]}, headers=t.headers), 422)
    assert_problem(await capp.post("/v1/conversations", json={"title": "x" * 201}, headers=t.headers), 422)
    assert_problem(await capp.get("/v1/conversations", params={"cursor": "garbage!"}, headers=t.headers), 400)
    assert_problem(await capp.get("/v1/conversations", params={"cursor": "WyJ4Il0"}, headers=t.headers), 400)
    assert_problem(await capp.get("/v1/conversations", params={"limit": 0}, headers=t.headers), 422)
    assert_problem(await capp.get("/v1/conversations/not-a-uuid", headers=t.headers), 404)
    assert_problem(await capp.post("/v1/chat", json={"message": ""}, headers=t.headers), 422)
    assert_problem(await capp.post("/v1/chat", json={"message": "hi", "history": [{"role": "system", "content": "x"}]},
                                   headers=t.headers), 422)
    assert_problem(await capp.post("/v1/chat", json={"message": "hi"}), 401)


async def test_a_quiet_stream_gets_keep_alive_comments():
    import asyncio

    from api.chat.session import END, SessionEvents

    class Session:
        def __init__(self) -> None:
            self.queue: asyncio.Queue = asyncio.Queue()
            self.closed = False
            self.shutdown = None

        async def close(self) -> None:
            self.closed = True

    session = Session()
    events = SessionEvents(session, lambda item: [f"data: {item}\n\n".encode()], end=[b"data: [DONE]\n\n"])
    events._heartbeat()  # a beat with nothing sent since the last one
    assert await anext(events) == b": keep-alive\n\n"
    session.queue.put_nowait("a")
    session.queue.put_nowait("b")
    assert await anext(events) == b"data: a\n\ndata: b\n\n"  # queued together, written together
    events._heartbeat()  # something went out since the last beat: no comment
    session.queue.put_nowait(END)
    assert await anext(events) == b"data: [DONE]\n\n"
    with pytest.raises(StopAsyncIteration):
        await anext(events)
    await events.aclose()
    assert session.closed and events._beat is None
