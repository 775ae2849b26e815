"""Streaming multipart/form-data: each file part goes straight to the blob store.

python-multipart parses incrementally and reports parts through synchronous callbacks; we
queue those events and handle them after each network chunk, so file writes are async and
memory holds at most one network chunk plus small form fields.

Every dimension of a hostile body is capped, each with a 413 (or a 400 for broken framing)
that says which cap: the whole body (`max_files` full files plus a small margin), the number
of parts, the number and size of non-file fields, and the boundary's length (70 characters,
RFC 2046). Each part's headers are capped by python-multipart itself (`MAX_HEADERS` lines of
at most `MAX_HEADER_LINE` bytes: a 400). On any error the blobs this request wrote are
removed, so nothing of a refused upload stays on disk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header

from core.errors import BadRequest, PayloadTooLarge, QuarryError
from storage.blobs import BlobStore, BlobWriter, StoredBlob

__all__ = ["BODY_MARGIN", "MAX_FIELDS", "MAX_FIELD_BYTES", "MAX_HEADERS", "MAX_HEADER_LINE", "UploadedFile",
           "read_multipart"]

MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 16
"""Non-file parts (only `metadata` is read today; a few more are tolerated, not thousands)."""
MAX_HEADERS = 8
"""Header lines per part (a part needs two: Content-Disposition and Content-Type)."""
MAX_HEADER_LINE = 4 * 1024
MAX_BOUNDARY = 70
BODY_MARGIN = 2 * 1024 * 1024
"""Beyond max_files full files: fields, headers and framing (16 x 64 KB of fields is 1 MB)."""


@dataclass
class UploadedFile:
    filename: str
    content_type: str | None
    blob: StoredBlob


@dataclass
class _Form:
    files: list[UploadedFile] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


async def read_multipart(
    content_type: str, body: AsyncIterator[bytes], blobs: BlobStore, tenant_id: Any, *,
    max_file_bytes: int, max_files: int,
) -> _Form:
    """Stream the body into blobs. On any error, blobs written by this request are removed."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart/form-data needs a boundary parameter")
    if len(boundary) > MAX_BOUNDARY:
        raise BadRequest(f"the multipart boundary is longer than {MAX_BOUNDARY} characters (RFC 2046)")
    max_body = max_files * max_file_bytes + BODY_MARGIN
    max_parts = max_files + MAX_FIELDS
    events: list[tuple[str, Any]] = []
    header: dict[str, bytearray] = {"field": bytearray(), "value": bytearray()}  # at most MAX_HEADER_LINE
    headers: dict[bytes, bytes] = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        headers[bytes(header["field"]).lower()] = bytes(header["value"])
        header["field"], header["value"] = bytearray(), bytearray()

    def on_headers_finished() -> None:
        events.append(("begin", dict(headers)))
        headers.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        events.append(("data", bytes(data[start:end])))

    def on_part_end() -> None:
        events.append(("end", None))

    parser = MultipartParser(boundary, {
        "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data, "on_part_end": on_part_end,
    }, max_header_count=MAX_HEADERS, max_header_size=MAX_HEADER_LINE)
    form = _Form()
    state = _PartState(form, blobs, tenant_id, max_file_bytes, max_files, max_parts)
    received = 0
    try:
        async for chunk in body:
            received += len(chunk)
            if received > max_body:
                raise PayloadTooLarge(f"the request body is larger than {max_body:,} bytes "
                                      f"({max_files} files of at most {max_file_bytes:,} bytes, and the form)")
            try:
                parser.write(chunk)
            except QuarryError:
                raise  # a cap, raised from a callback
            except Exception as exc:  # python-multipart raises its own errors on bad framing
                raise BadRequest(f"malformed multipart body: {exc}") from None
            for kind, payload in events:
                await state.handle(kind, payload)
            events.clear()
        parser.finalize()
        if state.writer is not None:
            raise BadRequest("malformed multipart body: a part was not terminated")
    except BaseException:
        await state.abort()
        raise
    return form


class _PartState:
    def __init__(
        self, form: _Form, blobs: BlobStore, tenant_id: Any, max_file_bytes: int, max_files: int, max_parts: int,
    ) -> None:
        self.form, self.blobs, self.tenant_id = form, blobs, tenant_id
        self.max_file_bytes, self.max_files, self.max_parts = max_file_bytes, max_files, max_parts
        self.parts = 0
        self.fields = 0
        self.writer: BlobWriter | None = None
        self.file_meta: tuple[str, str | None] | None = None
        self.field_name: str | None = None
        self.field_value = bytearray()

    async def handle(self, kind: str, payload: Any) -> None:
        if kind == "begin":
            # Checked before the file and field caps, so it holds whatever the parts are.
            self.parts += 1
            if self.parts > self.max_parts:
                raise PayloadTooLarge(f"more than {self.max_parts} parts in the multipart body")
            disposition, params = parse_options_header(payload.get(b"content-disposition", b""))
            if disposition != b"form-data" or b"name" not in params:
                raise BadRequest("each multipart part needs Content-Disposition: form-data; name=...")
            filename = params.get(b"filename")
            if filename is not None:
                if len(self.form.files) >= self.max_files:
                    raise PayloadTooLarge(f"at most {self.max_files} files per request")
                name = filename.decode("utf-8", "replace").replace("\\", "/").rsplit("/", 1)[-1] or "file"
                ctype = payload.get(b"content-type")
                self.file_meta = (name, ctype.decode("latin-1") if ctype else None)
                self.writer = self.blobs.writer(self.tenant_id, self.max_file_bytes, repr(name))
            else:
                self.fields += 1
                if self.fields > MAX_FIELDS:
                    raise PayloadTooLarge(f"more than {MAX_FIELDS} form fields (parts without a filename)")
                self.field_name = params[b"name"].decode("utf-8", "replace")
                self.field_value = bytearray()
        elif kind == "data":
            if self.writer is not None:
                await self.writer.write(payload)
            else:
                self.field_value += payload
                if len(self.field_value) > MAX_FIELD_BYTES:
                    name = self.field_name or ""
                    name = name if len(name) <= 64 else name[:63] + "…"
                    raise PayloadTooLarge(f"form field {name!r} is larger than {MAX_FIELD_BYTES:,} bytes")
        elif kind == "end":
            if self.writer is not None and self.file_meta is not None:
                blob = await self.writer.finish()
                self.form.files.append(UploadedFile(self.file_meta[0], self.file_meta[1], blob))
                self.writer, self.file_meta = None, None
            elif self.field_name is not None:
                self.form.fields[self.field_name] = self.field_value.decode("utf-8", "replace")
                self.field_name = None

    async def abort(self) -> None:
        if self.writer is not None:
            await self.writer.abort()
        for uploaded in self.form.files:
            if not uploaded.blob.existed:
                self.blobs.delete(self.tenant_id, uploaded.blob.sha256)
