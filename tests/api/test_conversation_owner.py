"""Conversations belong to their creator: another member (another key) of the same tenant gets
404 on get, post-message and delete, and an empty list; keys of one user share its conversations.
Enforced by row-level security (tests/storage/test_conversation_owner.py)."""

from __future__ import annotations

import pytest

from tests.api.chat_helpers import chat_app, parse_sse
from tests.api.helpers import assert_problem, bearer, create_key


@pytest.fixture(scope="module")
async def capp(settings):
    async with chat_app(settings) as app:
        yield app


async def _conversation(capp, headers, title="mine") -> str:
    r = await capp.post("/v1/conversations", json={"title": title}, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def test_another_key_of_the_tenant_gets_404(capp, make_tenant):
    t = await make_tenant()
    member = bearer((await create_key(capp, t.headers, "member"))["key"])
    admin_other = bearer((await create_key(capp, t.headers, "admin"))["key"])  # even an admin
    conv = await _conversation(capp, t.headers)
    r = await capp.post(f"/v1/conversations/{conv}/messages", json={"content": "What is my secret plan?"},
                        headers=t.headers)
    assert r.status_code == 200, r.text

    for intruder in (member, admin_other):
        assert_problem(await capp.get(f"/v1/conversations/{conv}", headers=intruder), 404)
        assert (await capp.get("/v1/conversations", headers=intruder)).json()["items"] == []
        for stream in (False, True):
            assert_problem(await capp.post(f"/v1/conversations/{conv}/messages",
                                           json={"content": "me too", "stream": stream}, headers=intruder), 404)
        assert_problem(await capp.delete(f"/v1/conversations/{conv}", headers=intruder), 404)

    # The owner still has all of it, untouched by the attempts.
    r = await capp.get(f"/v1/conversations/{conv}", headers=t.headers)
    assert r.status_code == 200
    assert [(m["role"], m["status"]) for m in r.json()["messages"]] == [("user", "complete"),
                                                                       ("assistant", "complete")]
    assert r.json()["messages"][0]["content"] == "What is my secret plan?"
    assert [c["id"] for c in (await capp.get("/v1/conversations", headers=t.headers)).json()["items"]] == [conv]

    # Each member has its own conversations, and streaming answers are stored for their owner.
    theirs = await _conversation(capp, member, "theirs")
    r = await capp.post(f"/v1/conversations/{theirs}/messages", json={"content": "hello", "stream": True},
                        headers=member)
    assert parse_sse(r.text)[-1].event == "done"
    r = await capp.get(f"/v1/conversations/{theirs}", headers=member)
    assert [m["role"] for m in r.json()["messages"]] == ["user", "assistant"]
    assert_problem(await capp.get(f"/v1/conversations/{theirs}", headers=t.headers), 404)
    assert (await capp.delete(f"/v1/conversations/{theirs}", headers=member)).status_code == 204


async def test_keys_of_one_user_share_its_conversations(capp, make_tenant):
    """The owner is the user behind a key when it has one: a user's new key keeps its history."""
    t = await make_tenant()
    r = await capp.post("/v1/admin/users", json={"email": "ada@example.com", "role": "member"}, headers=t.headers)
    assert r.status_code == 201, r.text
    user_id = r.json()["id"]
    first = bearer((await create_key(capp, t.headers, "member", user_id=user_id))["key"])
    second = bearer((await create_key(capp, t.headers, "member", user_id=user_id))["key"])
    someone_else = bearer((await create_key(capp, t.headers, "member"))["key"])
    conv = await _conversation(capp, first)
    assert (await capp.get(f"/v1/conversations/{conv}", headers=second)).status_code == 200
    assert [c["id"] for c in (await capp.get("/v1/conversations", headers=second)).json()["items"]] == [conv]
    assert_problem(await capp.get(f"/v1/conversations/{conv}", headers=someone_else), 404)
