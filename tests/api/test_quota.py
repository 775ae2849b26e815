"""Per-tenant storage quota: bytes (413) and documents (409), decided in the upload's transaction
and race-safe; settings defaults, operator overrides, usage in the limits endpoint."""

from __future__ import annotations

import asyncio
from uuid import UUID

import msgspec
import pytest

from api.documents.quota import QuotaCheck
from core.errors import Conflict
from storage.repositories import documents
from storage.tenancy import tenant_tx
from tests.api.helpers import assert_problem, bearer, create_key
from tests.api.test_documents import blob_files, list_documents, upload_files


async def _collection(client, headers) -> str:
    r = await client.post("/v1/collections", json={"name": "quota"}, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def _set_quota(client, operator, tenant, **quota) -> dict:
    r = await client.put(f"/v1/admin/tenants/{tenant.tenant.name}/limits", json={"quota": quota},
                         headers=operator.headers)
    assert r.status_code == 200, r.text
    return r.json()


async def _upload_text(client, headers, cid, text: str, uri: str | None = None):
    body = {"text": text, **({"uri": uri} if uri else {})}
    return await client.post(f"/v1/collections/{cid}/documents", json=body, headers=headers)


async def test_upload_over_the_byte_quota_is_413_with_quota_and_usage(client, make_tenant, settings):
    operator, t = await make_tenant(operator=True), await make_tenant()
    await _set_quota(client, operator, t, storage_bytes=100)
    cid = await _collection(client, t.headers)
    assert (await _upload_text(client, t.headers, cid, "a" * 60, uri="one")).status_code == 202
    files_before = blob_files(settings, t.id)

    problem = assert_problem(await _upload_text(client, t.headers, cid, "b" * 60, uri="two"), 413)
    assert problem["quota_bytes"] == 100 and problem["usage_bytes"] == 60 and problem["requested_bytes"] == 60
    assert "100" in problem["detail"] and "60" in problem["detail"]
    # Nothing of the refused upload stays: no document, no stored bytes.
    assert [d["uri"] for d in (await list_documents(client, t.headers))["items"]] == ["one"]
    assert blob_files(settings, t.id) == files_before

    # A multipart batch that does not fit is refused whole.
    files = [("files", ("x.txt", b"x" * 30, "text/plain")), ("files", ("y.txt", b"y" * 30, "text/plain"))]
    assert_problem(await upload_files(client, t.headers, cid, files), 413)
    assert len((await list_documents(client, t.headers))["items"]) == 1


async def test_a_replaced_document_counts_its_new_size_once(client, make_tenant):
    operator, t = await make_tenant(operator=True), await make_tenant()
    await _set_quota(client, operator, t, storage_bytes=100)
    cid = await _collection(client, t.headers)
    assert (await _upload_text(client, t.headers, cid, "a" * 60, uri="doc")).status_code == 202
    # 60 + 90 would exceed 100, but the replacement frees the old 60 bytes.
    r = await _upload_text(client, t.headers, cid, "b" * 90, uri="doc")
    assert r.status_code == 202, r.text
    assert r.json()["documents"][0]["action"] == "replaced"
    limits = await _set_quota(client, operator, t, storage_bytes=100)
    assert limits["usage"] == {"documents": 1, "storage_bytes": 90}
    # Growing past the quota by replacement is refused too.
    assert_problem(await _upload_text(client, t.headers, cid, "c" * 101, uri="doc"), 413)


async def test_upload_over_the_document_quota_is_409(client, make_tenant):
    operator, t = await make_tenant(operator=True), await make_tenant()
    await _set_quota(client, operator, t, documents=2)
    cid = await _collection(client, t.headers)
    for n in range(2):
        assert (await _upload_text(client, t.headers, cid, f"text {n}", uri=f"u{n}")).status_code == 202
    problem = assert_problem(await _upload_text(client, t.headers, cid, "one too many", uri="u2"), 409)
    assert problem["quota_documents"] == 2 and problem["usage_documents"] == 2
    # Re-uploading what is already there adds nothing and is accepted; so is a replacement.
    assert (await _upload_text(client, t.headers, cid, "text 0", uri="u0")).status_code == 202
    assert (await _upload_text(client, t.headers, cid, "new text 1", uri="u1")).status_code == 202
    # Deleting a document frees its slot.
    doc_id = (await list_documents(client, t.headers))["items"][0]["id"]
    assert (await client.delete(f"/v1/documents/{doc_id}", headers=t.headers)).status_code == 204
    assert (await _upload_text(client, t.headers, cid, "now it fits", uri="u2")).status_code == 202


async def test_concurrent_uploads_cannot_both_take_the_last_slots(client, make_tenant):
    operator, t = await make_tenant(operator=True), await make_tenant()
    quota = 3
    await _set_quota(client, operator, t, documents=quota)
    cid = await _collection(client, t.headers)
    responses = await asyncio.gather(*(
        _upload_text(client, t.headers, cid, f"concurrent text {n}", uri=f"c{n}") for n in range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [202] * quota + [409] * (8 - quota), [r.text for r in responses]
    assert len((await list_documents(client, t.headers))["items"]) == quota


async def test_quota_defaults_come_from_settings_and_an_operator_overrides_them(app_client, settings, make_tenant):
    small = msgspec.structs.replace(settings, tenant_max_documents=1, tenant_max_storage_bytes=1000)
    async with app_client(small) as client:
        operator, t = await make_tenant(operator=True), await make_tenant()
        cid = await _collection(client, t.headers)
        assert (await _upload_text(client, t.headers, cid, "first", uri="a")).status_code == 202
        assert_problem(await _upload_text(client, t.headers, cid, "second", uri="b"), 409)

        limits = await _set_quota(client, operator, t, documents=0)  # 0: unlimited for this tenant
        assert limits["quota"] == {"storage_bytes": 1000, "documents": 0}
        assert limits["quota_overrides"] == {"documents": 0}
        assert (await _upload_text(client, t.headers, cid, "second", uri="b")).status_code == 202
        assert_problem(await _upload_text(client, t.headers, cid, "x" * 1000, uri="c"), 413)  # bytes still apply

        limits = await _set_quota(client, operator, t)  # {}: back to the settings' defaults
        assert limits["quota"] == {"storage_bytes": 1000, "documents": 1}
        assert limits["usage"] == {"documents": 2, "storage_bytes": len("first") + len("second")}
        assert_problem(await _upload_text(client, t.headers, cid, "third", uri="c"), 409)


async def test_quota_overrides_are_validated_and_operator_only(client, make_tenant):
    operator, t = await make_tenant(operator=True), await make_tenant()
    url = f"/v1/admin/tenants/{t.tenant.name}/limits"
    assert_problem(await client.put(url, json={"quota": {"documents": -1}}, headers=operator.headers), 422)
    assert_problem(await client.put(url, json={"quota": {"files": 1}}, headers=operator.headers), 422)
    assert_problem(await client.put(url, json={"quota": {"documents": 10**9}}, headers=t.headers), 403)
    r = await client.get(url, headers=operator.headers)
    assert r.status_code == 200 and r.json()["usage"] == {"documents": 0, "storage_bytes": 0}


async def test_the_second_of_two_uploads_waits_for_the_first_and_counts_it(
    client, make_tenant, settings, pool, owner_pool,
):
    """Deterministic version of the race: the first upload's transaction has registered its
    document and passed its check but not committed; the second must wait (quota lock) and then
    see it - without the lock both would pass, each counting only itself."""
    t = await make_tenant()
    cid = UUID(await _collection(client, t.headers))
    one_slot = msgspec.structs.replace(settings, tenant_max_documents=1)

    async def register(uri: str) -> None:
        async with tenant_tx(pool, t.id) as conn:
            check = QuotaCheck(one_slot, t.id)
            await check.start(conn)
            await documents.register_upload(
                conn, tenant_id=t.id, collection_id=cid, title=uri, uri=uri, mime_type="text/plain",
                content_hash=uri * 8, size_bytes=10, metadata={})
            await check.finish(conn)
            if uri == "first":
                second.append(asyncio.create_task(register("second")))
                await _until_waiting_on_quota_lock(owner_pool)

    second: list[asyncio.Task[None]] = []
    await register("first")
    with pytest.raises(Conflict):
        await second[0]
    assert [d["uri"] for d in (await list_documents(client, t.headers))["items"]] == ["first"]


async def _until_waiting_on_quota_lock(owner_pool) -> None:
    for _ in range(3000):  # a generous bound on the wait for the other task to reach the lock
        async with owner_pool.acquire() as conn:
            if await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"):
                return
        await asyncio.sleep(0.01)
    raise AssertionError("the second upload never waited for the quota lock")


async def test_a_tenant_sees_its_own_quota_and_usage(client, make_tenant, settings):
    operator, t, other = await make_tenant(operator=True), await make_tenant(), await make_tenant()
    await _set_quota(client, operator, t, documents=5)
    cid = await _collection(client, t.headers)
    assert (await _upload_text(client, t.headers, cid, "twelve bytes", uri="a")).status_code == 202
    reader = await create_key(client, t.headers, "reader")
    r = await client.get("/v1/me/storage", headers=bearer(reader["key"]))
    assert r.status_code == 200, r.text
    assert r.json() == {"quota": {"storage_bytes": settings.tenant_max_storage_bytes, "documents": 5},
                        "usage": {"documents": 1, "storage_bytes": 12}}
    r = await client.get("/v1/me/storage", headers=other.headers)  # another tenant: its own, empty
    assert r.json()["usage"] == {"documents": 0, "storage_bytes": 0}
