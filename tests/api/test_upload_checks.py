"""Upload checks run in killable processes of the API (rag.upload_check): a check that does not end
is killed and answered 422 while the API goes on serving; no free checker in time is a 503.

The hostile check is a function (tests/jobs/hostile.py) standing in for pypdf on a hostile PDF;
the request, the pool, the limits and the kill are the production code.
"""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
import psutil
import pytest

from perf.simllm import SimLLM
from rag import upload_check
from rag.isolation import IsolatedPool
from tests.api.chat_helpers import chat_app
from tests.api.helpers import assert_problem
from tests.api.test_documents import list_documents, make_pdf, upload_files
from tests.api.test_shutdown import KILL_TIMEOUT_S, _wait_exit, granian
from tests.ingest_helpers import new_collection
from tests.jobs import hostile


@pytest.fixture
async def checkers(monkeypatch):
    """Replace the API's checkers by a pool made by the test (closed after it)."""
    made: list[IsolatedPool] = []

    def install(**kwargs) -> IsolatedPool:
        pool = IsolatedPool(what="checking the file", max_memory_mb=1024, **kwargs)
        made.append(pool)
        monkeypatch.setattr(upload_check, "_pool", pool)
        monkeypatch.setattr(upload_check, "CHECK_TIMEOUT_S", kwargs["timeout_s"])
        monkeypatch.setattr(upload_check, "_detect_and_check", hostile.stuck_check)
        return pool

    yield install
    for pool in made:
        await asyncio.to_thread(pool.close)


@pytest.fixture
async def live(settings):
    """The app on this test's event loop (the `client` fixture serves one request at a time)."""
    async with chat_app(settings) as app:
        yield app


async def test_a_check_that_does_not_end_is_killed_and_answered_422(live, make_tenant, settings, checkers):
    client = live
    checkers(workers=1, timeout_s=3.0)
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    upload = asyncio.create_task(upload_files(
        client, t.headers, cid, [("files", ("report.pdf", b"%PDF-1.7 hostile", "application/pdf"))]))
    pid_files = []
    while not pid_files and not upload.done():
        await asyncio.sleep(0.02)
        uploads = settings.data_path / "uploads" / str(t.id)
        pid_files = list(uploads.glob("*.pid")) if uploads.exists() else []
    # The check is running in its process; this API's event loop still answers.
    health = await client.get("/healthz")
    assert health.status_code == 200
    assert not upload.done()

    body = assert_problem(await upload, 422)
    assert body["detail"] == "report.pdf: the file could not be checked within 3 s"
    assert not hostile.alive(int(pid_files[0].read_text()))
    pid_files[0].unlink()
    assert (await list_documents(client, t.headers))["items"] == []


async def test_no_free_checker_in_time_is_503(live, make_tenant, checkers):
    client = live
    checkers(workers=1, timeout_s=3.0, max_wait_s=0.2)
    t = await make_tenant()
    cid = await new_collection(client, t.headers)

    def hostile_upload(name: str):
        return asyncio.create_task(upload_files(
            client, t.headers, cid, [("files", (name, b"%PDF-1.7 hostile " + name.encode(), "application/pdf"))]))

    first, second = hostile_upload("a.pdf"), hostile_upload("b.pdf")
    answers = sorted([(await first), (await second)], key=lambda r: r.status_code)
    assert [r.status_code for r in answers] == [422, 503]
    assert answers[0].json()["detail"].endswith("the file could not be checked within 3 s")
    assert answers[1].json()["detail"] == "every upload checker of this server is busy; try again in a few seconds"


async def test_uploads_through_granian_use_the_checkers_and_stop_with_the_server(settings, make_tenant, tmp_path):
    """The real server: its worker starts the checkers on the first upload (a fork server and two
    processes) and they end with it."""
    async with SimLLM() as sim, granian(settings, sim, tmp_path) as server:
        t = await make_tenant()
        async with httpx.AsyncClient(base_url=server.base, headers=t.headers, timeout=30) as http:
            cid = (await http.post("/v1/collections", json={"name": "checked"})).json()["id"]
            ok = await http.post(f"/v1/collections/{cid}/documents",
                                 files=[("files", ("fine.pdf", make_pdf("An honest report."), "application/pdf"))])
            assert ok.status_code == 202, ok.text
            bad = await http.post(f"/v1/collections/{cid}/documents",
                                  files=[("files", ("bad.pdf", b"%PDF-1.7 not really", "application/pdf"))])
            assert_problem(bad, 422)
            assert "bad.pdf: the PDF is corrupt" in bad.json()["detail"]
        descendants = psutil.Process(server.proc.pid).children(recursive=True)
        assert len(descendants) >= 4, descendants  # the Granian worker, the fork server, 2 checkers
        os.killpg(server.proc.pid, signal.SIGTERM)
        await _wait_exit(server.proc, within_s=KILL_TIMEOUT_S)
        _, alive_after = psutil.wait_procs(descendants, timeout=10)
        assert alive_after == []
