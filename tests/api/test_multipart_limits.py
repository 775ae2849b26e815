"""Hostile multipart bodies posted raw: too many parts or fields, huge fields, huge or
countless part headers, an endless boundary, a body past the total cap. Each gets a 4xx
problem naming the cap, and nothing of the upload stays in the database or on disk."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from api.documents.multipart import (
    BODY_MARGIN,
    MAX_FIELD_BYTES,
    MAX_FIELDS,
    MAX_HEADER_LINE,
    MAX_HEADERS,
    read_multipart,
)
from core.errors import PayloadTooLarge
from storage.blobs import BlobStore
from tests.api.helpers import assert_problem
from tests.api.test_documents import blob_files, list_documents
from tests.ingest_helpers import new_collection

BOUNDARY = b"bomb"


def field(name: str, value: bytes, extra_headers: bytes = b"") -> bytes:
    return (b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data; name=\"" + name.encode() + b"\"\r\n"
            + extra_headers + b"\r\n" + value + b"\r\n")


def file_part(name: str, data: bytes, extra_headers: bytes = b"") -> bytes:
    return (b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data; name=\"files\"; filename=\"" + name.encode()
            + b"\"\r\nContent-Type: text/plain\r\n" + extra_headers + b"\r\n" + data + b"\r\n")


END = b"--" + BOUNDARY + b"--\r\n"
GOOD_FILE = file_part("granite.txt", b"Granite is an igneous rock rich in quartz.")


async def post_raw(client, headers, cid, body: bytes, boundary: bytes = BOUNDARY):
    content_type = "multipart/form-data; boundary=" + boundary.decode()
    return await client.post(f"/v1/collections/{cid}/documents", content=body,
                             headers={**headers, "content-type": content_type})


async def assert_nothing_stored(client, settings, tenant) -> None:
    assert (await list_documents(client, tenant.headers))["items"] == []
    assert blob_files(settings, tenant.id) == []  # no blob, no temporary file


async def test_too_many_fields(client, make_tenant, settings):
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    body = GOOD_FILE + b"".join(field(f"f{i}", b"x") for i in range(MAX_FIELDS + 1)) + END
    problem = assert_problem(await post_raw(client, t.headers, cid, body), 413)
    assert f"more than {MAX_FIELDS} form fields" in problem["detail"]
    await assert_nothing_stored(client, settings, t)
    # The cap itself is allowed.
    ok = GOOD_FILE + b"".join(field(f"f{i}", b"x") for i in range(MAX_FIELDS)) + END
    assert (await post_raw(client, t.headers, cid, ok)).status_code == 202


async def test_too_many_parts(app_client, make_tenant, settings):
    t = await make_tenant()
    async with app_client(msgspec.structs.replace(settings, max_files_per_request=2)) as client:
        cid = await new_collection(client, t.headers)
        parts = [file_part("a.txt", b"andesite"), file_part("b.txt", b"basalt")]
        parts += [field(f"f{i}", b"x") for i in range(MAX_FIELDS)]
        parts.append(file_part("c.txt", b"chalk"))  # part 19 of at most 18
        problem = assert_problem(await post_raw(client, t.headers, cid, b"".join(parts) + END), 413)
        assert f"more than {2 + MAX_FIELDS} parts" in problem["detail"]
        await assert_nothing_stored(client, settings, t)


async def test_a_field_too_large(client, make_tenant, settings):
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    body = GOOD_FILE + field("metadata", b"{" + b" " * MAX_FIELD_BYTES + b"}") + END
    problem = assert_problem(await post_raw(client, t.headers, cid, body), 413)
    assert "form field 'metadata' is larger than" in problem["detail"]
    await assert_nothing_stored(client, settings, t)


async def test_part_headers_too_large_or_too_many(client, make_tenant, settings):
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    huge_value = b"X-Padding: " + b"a" * MAX_HEADER_LINE + b"\r\n"
    problem = assert_problem(await post_raw(client, t.headers, cid, GOOD_FILE + file_part("b.txt", b"b", huge_value)
                                            + END), 400)
    assert "header size exceeded" in problem["detail"]
    huge_name = b"X-" + b"n" * MAX_HEADER_LINE + b": v\r\n"
    assert_problem(await post_raw(client, t.headers, cid, file_part("b.txt", b"b", huge_name) + END), 400)
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS - 1))  # with Content-Disposition/Type: too many
    problem = assert_problem(await post_raw(client, t.headers, cid, file_part("c.txt", b"c", many) + END), 400)
    assert "header count exceeded" in problem["detail"]
    await assert_nothing_stored(client, settings, t)
    # A part with the most headers allowed is fine.
    enough = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS - 2))
    assert (await post_raw(client, t.headers, cid, file_part("d.txt", b"dolomite", enough) + END)).status_code == 202


async def test_an_endless_boundary(client, make_tenant, settings):
    t = await make_tenant()
    cid = await new_collection(client, t.headers)
    boundary = b"b" * 71
    body = b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.txt\"\r\n\r\na\r\n--" \
        + boundary + b"--\r\n"
    problem = assert_problem(await post_raw(client, t.headers, cid, body, boundary), 400)
    assert "boundary is longer than 70" in problem["detail"]
    await assert_nothing_stored(client, settings, t)


async def test_the_whole_body_is_capped(app_client, make_tenant, settings):
    """max_files full files plus a margin: padding the body (here after the closing boundary,
    which parsers skip) past that is refused, even though every part is within its own cap."""
    t = await make_tenant()
    limits = msgspec.structs.replace(settings, max_files_per_request=1, max_upload_bytes=1000)
    async with app_client(limits) as client:
        cid = await new_collection(client, t.headers)
        cap = 1000 + BODY_MARGIN
        body = GOOD_FILE + END + b"\r\n" * (cap // 2 + 1)
        problem = assert_problem(await post_raw(client, t.headers, cid, body), 413)
        assert f"request body is larger than {cap:,} bytes" in problem["detail"]
        await assert_nothing_stored(client, settings, t)


async def test_the_body_cap_holds_across_network_chunks(tmp_path):
    """Chunk by chunk, as from a slow client: the file already written is removed when the cap is hit."""
    blobs, tenant = BlobStore(tmp_path), uuid.uuid4()
    cap = 1000 + BODY_MARGIN

    async def pieces():
        yield GOOD_FILE + END
        for _ in range(4):
            yield b"\r\n" * (cap // 8 + 1)

    with pytest.raises(PayloadTooLarge, match="request body is larger than"):
        await read_multipart("multipart/form-data; boundary=bomb", pieces(), blobs, tenant, max_file_bytes=1000,
                             max_files=1)
    assert list(tmp_path.rglob("*")) in ([], [tmp_path / str(tenant)])  # at most the empty tenant folder

    async def fine():
        yield GOOD_FILE
        yield END
    form = await read_multipart("multipart/form-data; boundary=bomb", fine(), blobs, tenant, max_file_bytes=1000,
                                max_files=1)
    assert [f.filename for f in form.files] == ["granite.txt"]
