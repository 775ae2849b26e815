"""Caps on request sizes (chat messages, history, search queries, metadata filters, collection
lists) and text that is not Unicode: each is a 4xx problem, none reaches the database or a 500."""

from __future__ import annotations

import json

import pytest

from api.chat.schemas import MAX_HISTORY_MESSAGES, MAX_MESSAGE_CHARS, MAX_OPENAI_MESSAGES, MAX_TOTAL_CHARS
from api.metadata_filters import MAX_DOCUMENT_METADATA_BYTES, MAX_FILTER_BYTES, MAX_FILTER_DEPTH, MAX_FILTER_ENTRIES
from api.search.schemas import MAX_COLLECTIONS, MAX_CURSOR_CHARS, MAX_QUERY_CHARS
from tests.api.helpers import assert_problem

# A lone surrogate as a client encodes it raw (CESU-8 / Python's "surrogatepass"): not UTF-8.
RAW_SURROGATE = "\ud918".encode("utf-8", "surrogatepass")


def _nested(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for n in range(depth - 1):
        value = {f"k{n}": value}
    return value


async def _collection(client, headers) -> str:
    r = await client.post("/v1/collections", json={"name": "limits"}, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()["id"]


# --- search ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "says"), [
    ({"query": "q" * (MAX_QUERY_CHARS + 1)}, "length"),
    ({"query": "q", "collections": ["00000000-0000-0000-0000-000000000000"] * (MAX_COLLECTIONS + 1)}, "length"),
    ({"query": "q", "cursor": "c" * (MAX_CURSOR_CHARS + 1)}, "length"),
    ({"query": "q", "filter": {"metadata": _nested(MAX_FILTER_DEPTH + 1)}}, "nested"),
    ({"query": "q", "filter": {"metadata": {"k": "v" * MAX_FILTER_BYTES}}}, "bytes"),
    ({"query": "q", "filter": {"metadata": {"k": list(range(MAX_FILTER_ENTRIES + 1))}}}, "keys"),
    ({"query": "q", "filter": {"metadata": {f"k{n}": n for n in range(33)}}}, "length"),
])
async def test_oversized_search_requests_are_422(client, make_tenant, body, says):
    t = await make_tenant()
    problem = assert_problem(await client.post("/v1/search", json=body, headers=t.headers), 422)
    assert says in problem["detail"]


async def test_a_metadata_filter_within_the_bounds_is_accepted(client, make_tenant):
    t = await make_tenant()
    metadata = {**_nested(MAX_FILTER_DEPTH), "tags": list(range(10))}
    r = await client.post("/v1/search", json={"query": "q", "mode": "keyword", "filter": {"metadata": metadata}},
                          headers=t.headers)
    assert r.status_code == 200, r.text
    r = await client.get("/v1/documents", params={"metadata": json.dumps(metadata)}, headers=t.headers)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("metadata", [
    _nested(MAX_FILTER_DEPTH + 1),
    {"k": "v" * MAX_FILTER_BYTES},
    {f"k{n}": n for n in range(MAX_FILTER_ENTRIES + 1)},
])
async def test_oversized_documents_metadata_filter_is_4xx(client, make_tenant, metadata):
    t = await make_tenant()
    r = await client.get("/v1/documents", params={"metadata": json.dumps(metadata)}, headers=t.headers)
    assert 400 <= r.status_code < 500
    assert_problem(r, r.status_code)


async def test_the_openapi_schema_shows_the_caps(client):
    schemas = (await client.get("/docs/openapi.json")).json()["components"]["schemas"]
    search = next(v for k, v in schemas.items() if k.endswith("SearchRequest"))
    assert search["properties"]["query"]["maxLength"] == MAX_QUERY_CHARS
    one_shot = next(v for k, v in schemas.items() if k.endswith("OneShotChat"))
    assert one_shot["properties"]["message"]["maxLength"] == MAX_MESSAGE_CHARS
    assert "maxItems" in json.dumps(one_shot["properties"]["history"])
    search_filter = next(v for k, v in schemas.items() if k.endswith("SearchFilter"))
    assert f"{MAX_FILTER_BYTES} bytes" in search_filter["properties"]["metadata"]["description"]


# --- chat ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "says"), [
    ({"message": "m" * (MAX_MESSAGE_CHARS + 1)}, "length"),
    ({"message": "m", "history": [{"role": "user", "content": "h"}] * (MAX_HISTORY_MESSAGES + 1)}, "length"),
    ({"message": "m", "history": [{"role": "user", "content": "h" * (MAX_MESSAGE_CHARS + 1)}]}, "length"),
    ({"message": "m" * MAX_MESSAGE_CHARS,
      "history": [{"role": "user", "content": "h" * MAX_MESSAGE_CHARS}] * (MAX_TOTAL_CHARS // MAX_MESSAGE_CHARS)},
     "characters"),
])
async def test_oversized_one_shot_chats_are_422(client, make_tenant, body, says):
    t = await make_tenant()
    problem = assert_problem(await client.post("/v1/chat", json=body, headers=t.headers), 422)
    assert says in problem["detail"]


async def test_an_oversized_conversation_message_is_422(client, make_tenant):
    t = await make_tenant()
    r = await client.post("/v1/conversations", json={"title": "caps"}, headers=t.headers)
    assert r.status_code == 201, r.text
    url = f"/v1/conversations/{r.json()['id']}/messages"
    assert_problem(await client.post(url, json={"content": "m" * (MAX_MESSAGE_CHARS + 1)}, headers=t.headers), 422)


def _user(content) -> dict:
    return {"role": "user", "content": content}


@pytest.mark.parametrize(("messages", "says"), [
    ([_user("m" * (MAX_MESSAGE_CHARS + 1))], "length"),
    ([_user([{"type": "text", "text": "m" * (MAX_MESSAGE_CHARS // 2 + 1)}] * 2)], "per message"),
    ([_user([{"type": "text", "text": "m"}] * 51)], "length"),
    ([_user("m")] * (MAX_OPENAI_MESSAGES + 1), "length"),
    ([_user("m" * MAX_MESSAGE_CHARS)] * (MAX_TOTAL_CHARS // MAX_MESSAGE_CHARS + 1), "characters"),
])
async def test_oversized_chat_completions_are_422(client, make_tenant, messages, says):
    t = await make_tenant()
    r = await client.post("/v1/chat/completions", json={"model": "quarry", "messages": messages}, headers=t.headers)
    problem = assert_problem(r, 422)
    assert says in problem["detail"]


# --- text that is not Unicode ------------------------------------------------------------------


def _endpoints(cid: str) -> list[tuple[str, bytes]]:
    s = b'"x' + RAW_SURROGATE + b'"'
    return [
        ("/v1/search", b'{"query": "q", "filter": {"metadata": {"team": ' + s + b"}}}"),
        ("/v1/search", b'{"query": ' + s + b"}"),
        ("/v1/collections", b'{"name": ' + s + b"}"),
        (f"/v1/collections/{cid}/documents", b'{"text": "hello", "title": ' + s + b"}"),
        (f"/v1/collections/{cid}/documents", b'{"text": "hello", "metadata": {"k": ' + s + b"}}"),
        ("/v1/chat", b'{"message": ' + s + b"}"),
        ("/v1/chat/completions", b'{"model": "quarry", "messages": [{"role": "user", "content": ' + s + b"}]}"),
        ("/v1/conversations", b'{"title": ' + s + b"}"),
        ("/v1/admin/users", b'{"email": "a@example.com", "name": ' + s + b"}"),
        ("/v1/sources", b'{"name": "s", "kind": "website", "config": {"url": ' + s + b"}}"),
    ]


async def test_json_bodies_with_lone_surrogates_are_400_everywhere(client, make_tenant, settings):
    t = await make_tenant()
    cid = await _collection(client, t.headers)
    headers = {**t.headers, "content-type": "application/json"}
    for path, raw in _endpoints(cid):
        problem = assert_problem(await client.post(path, content=raw, headers=headers), 400)
        assert "UTF-8" in problem["detail"], (path, problem)
        # The same text escaped in JSON ("\ud918") is refused too (msgspec: not a surrogate pair).
        escaped = raw.replace(RAW_SURROGATE, b"\\ud918")
        assert_problem(await client.post(path, content=escaped, headers=headers), 400)
    # Nothing was stored on the way.
    assert (await client.get("/v1/documents", headers=t.headers)).json()["items"] == []
    names = [c["name"] for c in (await client.get("/v1/collections", headers=t.headers)).json()["items"]]
    assert names == ["limits"]


async def test_invalid_utf8_in_multipart_fields_and_query_strings_is_replaced_consistently(client, make_tenant):
    t = await make_tenant()
    cid = await _collection(client, t.headers)
    metadata = b'{"team": "x' + RAW_SURROGATE + b'"}'
    r = await client.post(f"/v1/collections/{cid}/documents", headers=t.headers,
                          files=[("files", ("a.txt", b"about otters", "text/plain")),
                                 ("metadata", (None, metadata))])
    assert r.status_code == 202, r.text
    r = await client.get("/v1/documents", headers=t.headers)
    (stored,) = r.json()["items"]
    team = stored["metadata"]["team"]
    assert team.startswith("x") and "\ufffd" in team and team.encode("utf-8")  # valid Unicode now
    # A query string is decoded the same way, so the stored value can be found again.
    r = await client.get("/v1/documents?metadata=%7B%22team%22%3A%22x%ED%A4%98%22%7D", headers=t.headers)
    assert r.status_code == 200 and [d["id"] for d in r.json()["items"]] == [stored["id"]]


async def test_nul_characters_are_400_everywhere_and_nothing_is_stored(client, make_tenant):
    t = await make_tenant()
    operator = await make_tenant(operator=True)
    cid = await _collection(client, t.headers)
    headers = {**t.headers, "content-type": "application/json"}
    for path, raw in _endpoints(cid):
        with_nul = raw.replace(RAW_SURROGATE, b"\\u0000")
        problem = assert_problem(await client.post(path, content=with_nul, headers=headers), 400)
        assert "NUL" in problem["detail"], (path, problem)
    r = await client.get("/v1/documents", params={"metadata": '{"team": "a\\u0000"}'}, headers=t.headers)
    assert "NUL" in assert_problem(r, 400)["detail"]
    # Where text is not JSON (a path parameter, a multipart field), the database's refusal is a 400 too.
    assert_problem(await client.get("/v1/admin/tenants/a%00b/limits", headers=operator.headers), 400)
    r = await client.post(f"/v1/collections/{cid}/documents", headers=t.headers,
                          files=[("files", ("a.txt", b"otters", "text/plain")),
                                 ("metadata", (None, b'{"team": "a\\u0000"}'))])
    assert_problem(r, 400)
    assert (await client.get("/v1/documents", headers=t.headers)).json()["items"] == []
    # An escaped backslash before "u0000" is ordinary text, not NUL.
    r = await client.post("/v1/collections", content=b'{"name": "a\\\\u0000b"}', headers=headers)
    assert r.status_code == 201 and r.json()["name"] == "a\\u0000b"


async def test_a_documents_metadata_is_bounded(client, make_tenant):
    t = await make_tenant()
    cid = await _collection(client, t.headers)
    big = {"k": "v" * MAX_DOCUMENT_METADATA_BYTES}
    r = await client.post(f"/v1/collections/{cid}/documents", json={"text": "hello", "metadata": big},
                          headers=t.headers)
    assert str(MAX_DOCUMENT_METADATA_BYTES) in assert_problem(r, 413)["detail"]
    assert (await client.get("/v1/documents", headers=t.headers)).json()["items"] == []
    r = await client.post(f"/v1/collections/{cid}/documents", json={"text": "hello", "metadata": {"k": "v"}},
                          headers=t.headers)
    assert r.status_code == 202, r.text
