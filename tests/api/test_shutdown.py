"""Streams and hang-ups under a real Granian. On SIGTERM, open SSE streams (chat, the OpenAI
facade, document progress) end at once with a final event and the worker exits long before its
kill timeout; a request already in flight still completes with 200. A client hanging up on a
non-streaming chat cancels it (Granian reports the hang-up to a pending `receive()`). And the
official `openai` client raises the facade's final chunk as an APIError."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
import openai
import pytest

from perf.simllm import Reply, SimLLM
from storage.embedded import free_port
from storage.repositories import collections as collection_repo
from storage.repositories import conversations as conv_repo
from storage.repositories import documents as document_repo
from storage.tenancy import principal_settings, tenant_tx
from tests.api.chat_helpers import chat_app, parse_sse

REPO = Path(__file__).resolve().parents[2]
KILL_TIMEOUT_S = 20  # Granian's --workers-kill-timeout: without the final event, streams would last this long


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _spawn(settings, llm_base_url: str, tmp_path: Path) -> Server:
    """The API under Granian (one worker, uvloop, as `quarry up` runs it) with the simulated LLM."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUARRY_")}
    env.update({"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
                "QUARRY_APP_DB_PASSWORD": settings.app_db_password or "",
                "QUARRY_DATA_DIR": settings.data_dir, "QUARRY_LOG_LEVEL": "info",
                "QUARRY_LLM_PROVIDER": "openai", "QUARRY_LLM_BASE_URL": llm_base_url, "QUARRY_LLM_MODEL": "sim-llm",
                "QUARRY_LLM_READ_TIMEOUT_S": "60", "QUARRY_RATE_LIMIT_ENABLED": "false"})
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp_path / "granian.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "granian"), "--interface", "asgi", "--factory", "--workers", "1",
             "--loop", "uvloop", "--workers-kill-timeout", str(KILL_TIMEOUT_S), "--host", "127.0.0.1",
             "--port", str(port), "--no-access-log", "api.app:app_factory"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return Server(proc, f"http://127.0.0.1:{port}", log)


@asynccontextmanager
async def granian(settings, sim: SimLLM, tmp_path: Path) -> AsyncIterator[Server]:
    """A started server (ready), killed at the end if the test has not stopped it."""
    server = _spawn(settings, sim.base_url, tmp_path)
    proc = server.proc
    try:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=server.base, timeout=2) as client:
            while True:
                assert proc.poll() is None, server.output()
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, server.output()
                await asyncio.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                await _wait_exit(proc, within_s=KILL_TIMEOUT_S + 5)
            except AssertionError:
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@dataclass
class OpenStream:
    """A streamed response read in the background, with the time its body ended."""

    text: str = ""
    status: int | None = None
    ended_at: float | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @classmethod
    def start(cls, base: str, method: str, path: str, headers: dict[str, str], **kwargs) -> OpenStream:
        stream = cls()

        async def read() -> None:
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:  # a connection of its own
                async with client.stream(method, path, headers=headers, **kwargs) as r:
                    stream.status = r.status_code
                    async for chunk in r.aiter_text():
                        stream.text += chunk
            stream.ended_at = time.monotonic()

        stream.task = asyncio.create_task(read())
        return stream

    async def wait_for(self, what: str, within_s: float = 15) -> None:
        deadline = time.monotonic() + within_s
        while what not in self.text:
            assert self.task is not None
            if self.task.done():
                self.task.result()
                raise AssertionError(f"the stream ended without {what!r}: {self.text[-500:]}")
            assert time.monotonic() < deadline, f"no {what!r} in {self.text[-500:]}"
            await asyncio.sleep(0.05)


async def _queued_document(pool, tenant_id: uuid.UUID) -> uuid.UUID:
    """A document that stays `queued` (no job runs for it): its progress stream stays open."""
    async with tenant_tx(pool, tenant_id) as conn:
        collection = await collection_repo.create_collection(conn, tenant_id, f"c-{uuid.uuid4().hex[:8]}", "")
        doc, _ = await document_repo.register_upload(
            conn, tenant_id=tenant_id, collection_id=collection.id, title="Pending", uri=None,
            mime_type="text/plain", content_hash=uuid.uuid4().hex, size_bytes=10, metadata={})
    return doc.id


async def _wait_exit(proc: subprocess.Popen[bytes], within_s: float) -> int:
    deadline = time.monotonic() + within_s
    while proc.poll() is None:
        assert time.monotonic() < deadline, "the server did not exit in time"
        await asyncio.sleep(0.05)
    return proc.returncode


async def test_sigterm_ends_open_streams_with_a_final_event(settings, make_tenant, pool, tmp_path):
    # Each answer would take 40 s (200 tokens at 5/s): only the shutdown can end it early.
    async with SimLLM(ttft_ms=20, tokens_per_s=5, tokens=200) as sim, granian(settings, sim, tmp_path) as server:
        t = await make_tenant()
        async with httpx.AsyncClient(base_url=server.base, headers=t.headers) as client:
            conv = (await client.post("/v1/conversations", json={})).json()["id"]
            owner = uuid.UUID((await client.get("/v1/me")).json()["key_id"])  # the conversation's owner
        document_id = await _queued_document(pool, t.id)

        chat = OpenStream.start(server.base, "POST", f"/v1/conversations/{conv}/messages", t.headers,
                                json={"content": "Tell me everything.", "stream": True})
        facade = OpenStream.start(server.base, "POST", "/v1/chat/completions", t.headers,
                                  json={"model": "quarry", "stream": True,
                                        "messages": [{"role": "user", "content": "And the rest?"}]})
        progress = OpenStream.start(server.base, "GET", f"/v1/documents/{document_id}/events", t.headers)
        await chat.wait_for("event: token")
        await facade.wait_for('"content"')
        await progress.wait_for('"queued"')

        os.kill(server.proc.pid, signal.SIGTERM)  # to Granian's main process, as an orchestrator does
        signalled = time.monotonic()
        await asyncio.wait_for(asyncio.gather(chat.task, facade.task, progress.task), timeout=10)
        assert await _wait_exit(server.proc, within_s=10) == 0, server.output()
        exited = time.monotonic()
        for stream in (chat, facade, progress):
            assert stream.status == 200 and stream.ended_at is not None
            assert stream.ended_at - signalled < 5  # not at the kill timeout (20 s)
        assert exited - signalled < KILL_TIMEOUT_S / 2, server.output()
        assert "Killing worker" not in server.output()

        # Chat: tokens, then one retryable `error`, and nothing after it.
        events = parse_sse(chat.text)
        streamed = "".join(e.data["text"] for e in events if e.event == "token")
        assert events[-1].event == "error" and streamed
        assert events[-1].data["code"] == "shutting_down" and events[-1].data["retryable"] is True
        # The facade: an error chunk (the OpenAI SDK raises it as an APIError), then [DONE].
        chunks = [e.data for e in parse_sse(facade.text)]
        assert chunks[-1] == "[DONE]"
        assert chunks[-2]["error"]["code"] == "shutting_down" and chunks[-2]["error"]["type"] == "server_error"
        assert any(c["choices"][0]["delta"].get("content") for c in chunks[:-2])
        # Progress: the current state, then the final event.
        events = parse_sse(progress.text)
        assert [e.event for e in events] == ["status", "error"]
        assert events[-1].data["code"] == "shutting_down" and "retry: " in progress.text

        # The agents were stopped: both LLM calls were cancelled, not left running for 40 s.
        assert [r.outcome for r in sim.chat_requests] == ["cancelled", "cancelled"]
        # ...and the partial answer is stored as on a client hang-up.
        async with tenant_tx(pool, t.id, local_settings=principal_settings(owner)) as conn:
            messages, _ = await conv_repo.list_messages(conn, uuid.UUID(conv), 10)
        assert [(m.role, m.status) for m in messages] == [("user", "complete"), ("assistant", "cancelled")]
        assert messages[1].content == streamed


async def test_a_request_in_flight_at_sigterm_completes(settings, make_tenant, tmp_path):
    hold = asyncio.Event()
    async with SimLLM(ttft_ms=20, tokens_per_s=200, tokens=5) as sim, granian(settings, sim, tmp_path) as server:
        t = await make_tenant()
        sim.reply_next(Reply(text="Answered after the signal.", hold=hold))
        async with httpx.AsyncClient(base_url=server.base, headers=t.headers, timeout=30) as client:
            call = asyncio.create_task(client.post("/v1/chat", json={"message": "Slowly?", "stream": False}))
            await sim.wait_for(lambda: sim.chat_requests and sim.chat_requests[0].tokens_sent > 0, within_s=10)
            os.killpg(server.proc.pid, signal.SIGTERM)  # the whole group, as `quarry up` stops it
            await asyncio.sleep(1.0)
            assert not call.done()  # still being answered
            hold.set()
            r = await asyncio.wait_for(call, timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["answer"] == "Answered after the signal."
        assert await _wait_exit(server.proc, within_s=10) == 0, server.output()
        assert sim.chat_requests[0].outcome == "completed"



async def test_a_hang_up_cancels_a_non_streaming_chat(settings, make_tenant, tmp_path):
    async with SimLLM(ttft_ms=30_000, tokens_per_s=100, tokens=5) as sim, granian(settings, sim, tmp_path) as server:
        t = await make_tenant()
        async with httpx.AsyncClient(base_url=server.base, headers=t.headers, timeout=30) as client:
            call = asyncio.create_task(client.post("/v1/chat", json={"message": "Still there?", "stream": False}))
            await sim.wait_for(lambda: sim.chat_requests, within_s=10)  # the LLM is thinking (30 s)
            call.cancel()  # the client gives up: httpx closes the connection
        await sim.wait_for(lambda: sim.cancelled, within_s=3)
        assert [r.outcome for r in sim.chat_requests] == ["cancelled"]


async def test_the_openai_sdk_raises_the_final_chunk(settings, make_tenant):
    """In-process: the shutdown begins while the SDK reads a stream; it raises APIError with the
    code, which a client can catch to retry on another instance."""
    async with SimLLM(ttft_ms=20, tokens_per_s=5, tokens=200) as sim, chat_app(msgspec.structs.replace(
            settings, llm_provider="openai", llm_base_url=sim.base_url, llm_model="sim-llm")) as capp:
        t = await make_tenant()
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=capp.app))
        async with openai.AsyncOpenAI(base_url="http://quarry.test/v1", api_key=t.admin_key, max_retries=0,
                                      http_client=http) as client:

            async def read() -> list[object]:
                stream = await client.chat.completions.create(
                    model="quarry", stream=True, messages=[{"role": "user", "content": "Everything?"}])
                return [chunk async for chunk in stream]

            reading = asyncio.create_task(read())
            await sim.wait_for(lambda: sim.chat_requests and sim.chat_requests[0].tokens_sent >= 2, within_s=10)
            capp.app.state.shutdown.begin()
            with pytest.raises(openai.APIError) as caught:
                await asyncio.wait_for(reading, timeout=10)
        assert caught.value.code == "shutting_down" and "shutting down" in caught.value.message
        await sim.wait_for(lambda: sim.cancelled, within_s=2)
