"""Streaming multipart/form-data: each file part goes straight to the blob store.

python-multipart parses incrementally and reports parts through synchronous callbacks; we
queue those events and handle them after each network chunk, so file writes are async and
memory holds at most one network chunk plus small form fields.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header

from core.errors import BadRequest, PayloadTooLarge
from storage.blobs import BlobStore, BlobWriter, StoredBlob

__all__ = ["UploadedFile", "read_multipart"]

_MAX_FIELD_BYTES = 64 * 1024


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
    events: list[tuple[str, Any]] = []
    header: dict[str, bytes] = {"field": b"", "value": b""}
    headers: dict[bytes, bytes] = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        headers[header["field"].lower()] = header["value"]
        header["field"], header["value"] = b"", b""

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
    })
    form = _Form()
    state = _PartState(form, blobs, tenant_id, max_file_bytes, max_files)
    try:
        async for chunk in body:
            try:
                parser.write(chunk)
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
    def __init__(self, form: _Form, blobs: BlobStore, tenant_id: Any, max_file_bytes: int, max_files: int) -> None:
        self.form, self.blobs, self.tenant_id = form, blobs, tenant_id
        self.max_file_bytes, self.max_files = max_file_bytes, max_files
        self.writer: BlobWriter | None = None
        self.file_meta: tuple[str, str | None] | None = None
        self.field_name: str | None = None
        self.field_value = bytearray()

    async def handle(self, kind: str, payload: Any) -> None:
        if kind == "begin":
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
                self.field_name = params[b"name"].decode("utf-8", "replace")
                self.field_value = bytearray()
        elif kind == "data":
            if self.writer is not None:
                await self.writer.write(payload)
            else:
                self.field_value += payload
                if len(self.field_value) > _MAX_FIELD_BYTES:
                    raise PayloadTooLarge(f"form field {self.field_name!r} is too large")
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
