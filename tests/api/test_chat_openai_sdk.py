"""The OpenAI-compatible facade, driven by the official `openai` package."""

from __future__ import annotations

import httpx
import openai
import pytest

from rag.llm.offline import NOT_FOUND
from tests.api.chat_helpers import CORPUS, chat_app, load_corpus


@pytest.fixture(scope="module")
async def capp(settings):
    async with chat_app(settings) as app:
        yield app


def sdk(capp, key: str) -> openai.AsyncOpenAI:
    transport = httpx.ASGITransport(app=capp.app)
    return openai.AsyncOpenAI(base_url="http://quarry.test/v1", api_key=key, max_retries=0,
                              http_client=httpx.AsyncClient(transport=transport))


async def test_completions_non_streaming(capp, make_tenant, run_jobs):
    t = await make_tenant()
    _, docs = await load_corpus(capp, t.headers, run_jobs)
    async with sdk(capp, t.admin_key) as client:
        completion = await client.chat.completions.create(
            model="quarry", messages=[{"role": "user", "content": "Where do penguins live?"}])
    assert completion.object == "chat.completion" and completion.model == "quarry"
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert "Antarctica" in choice.message.content
    citations = completion.model_extra["citations"]
    assert citations[0]["document_id"] == docs["Penguins"] and citations[0]["quote"] in CORPUS["Penguins"]
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens > 0


async def test_completions_streaming(capp, make_tenant, run_jobs):
    t = await make_tenant()
    await load_corpus(capp, t.headers, run_jobs)
    async with sdk(capp, t.admin_key) as client:
        stream = await client.chat.completions.create(
            model="quarry", stream=True, stream_options={"include_usage": True},
            messages=[{"role": "system", "content": "Answer briefly."},
                      {"role": "user", "content": "What do glaciers carve?"}])
        chunks = [chunk async for chunk in stream]
        whole = await client.chat.completions.create(
            model="quarry", messages=[{"role": "user", "content": "What do glaciers carve?"}])
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "U-shaped valleys" in text and text == whole.choices[0].message.content
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "stop"
    assert finish[0].model_extra["citations"][0]["title"] == "Glaciers"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0


async def test_model_name_selects_the_collection(capp, make_tenant, run_jobs):
    t = await make_tenant()
    await load_corpus(capp, t.headers, run_jobs, name="nature", corpus={"Penguins": CORPUS["Penguins"]})
    await load_corpus(capp, t.headers, run_jobs, name="baking", corpus={"Sourdough": CORPUS["Sourdough"]})
    question = [{"role": "user", "content": "Where do penguins live?"}]
    async with sdk(capp, t.admin_key) as client:
        models = [m.id async for m in client.models.list()]
        assert models == ["quarry", "quarry:baking", "quarry:nature"]
        scoped = await client.chat.completions.create(model="quarry:baking", messages=question)
        assert scoped.choices[0].message.content.startswith(NOT_FOUND)
        found = await client.chat.completions.create(model="quarry:nature", messages=question)
        assert "Antarctica" in found.choices[0].message.content
        # Follow-ups: the earlier turns of the request are the history.
        follow_up = await client.chat.completions.create(model="quarry", messages=[
            *question, {"role": "assistant", "content": found.choices[0].message.content},
            {"role": "user", "content": "What do they eat?"}])
        assert "krill" in follow_up.choices[0].message.content

        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model="quarry:nope", messages=question)
        assert "quarry:nope" in str(info.value)
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="gpt-4o", messages=question)
        with pytest.raises(openai.UnprocessableEntityError):
            await client.chat.completions.create(model="quarry", messages=[{"role": "assistant", "content": "hi"}])
    async with sdk(capp, "qk_not-a-real-key") as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(model="quarry", messages=question)
