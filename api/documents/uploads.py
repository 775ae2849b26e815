"""Turning an upload request (multipart files or JSON text) into queued documents."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from arq.connections import ArqRedis
from redis.exceptions import RedisError

from api.documents.multipart import read_multipart
from api.documents.quota import QuotaCheck
from api.documents.schemas import Accepted, TextDocument
from api.json_bodies import decode_json_body
from api.metadata_filters import MAX_DOCUMENT_METADATA_BYTES
from core.errors import PayloadTooLarge, Unavailable, Unprocessable, UnsupportedMediaType
from core.settings import Settings
from jobs.ingest import enqueue_ingest
from rag.parsing import FORMATS
from rag.upload_check import check_file
from storage.blobs import BlobStore, StoredBlob
from storage.models import Document
from storage.repositories import collections, documents
from storage.tenancy import tenant_tx

__all__ = ["accept_json", "accept_multipart"]

# (filename, title, uri, format, stored bytes)
_Item = tuple[str | None, str, str | None, str, StoredBlob]
_NOT_QUEUED = "the ingestion queue was unavailable, so this upload was not queued; upload it again"


async def accept_multipart(
    content_type: str,
    body: AsyncIterator[bytes],
    *,
    tenant_id: UUID,
    collection_id: UUID,
    pool: asyncpg.Pool,
    arq: ArqRedis,
    blobs: BlobStore,
    settings: Settings,
) -> list[Accepted]:
    async with tenant_tx(pool, tenant_id, readonly=True) as conn:
        await collections.get_collection(conn, collection_id)  # 404 before reading the body
    form = await read_multipart(
        content_type,
        body,
        blobs,
        tenant_id,
        max_file_bytes=settings.max_upload_bytes,
        max_files=settings.max_files_per_request,
    )
    try:
        if not form.files:
            raise Unprocessable("no file in the request (send multipart parts with a filename)")
        metadata = _metadata_field(form.fields.get("metadata"))
        formats = [await _validate(f.filename, f.content_type, f.blob) for f in form.files]
    except BaseException:
        _discard(blobs, tenant_id, [f.blob for f in form.files])
        raise
    items: list[_Item] = [
        (f.filename, f.filename.rsplit(".", 1)[0], f.filename, fmt, f.blob)
        for f, fmt in zip(form.files, formats, strict=True)
    ]
    return await _register(items, metadata, tenant_id, collection_id, pool, arq, blobs, settings)


async def accept_json(
    body: bytes,
    *,
    tenant_id: UUID,
    collection_id: UUID,
    pool: asyncpg.Pool,
    arq: ArqRedis,
    blobs: BlobStore,
    settings: Settings,
) -> list[Accepted]:
    doc = decode_json_body(body, TextDocument)
    if not doc.text.strip():
        raise Unprocessable("text is empty")
    async with tenant_tx(pool, tenant_id, readonly=True) as conn:
        await collections.get_collection(conn, collection_id)
    blob = await blobs.save_bytes(tenant_id, doc.text.encode(), name="text")
    return await _register(
        [(None, doc.title, doc.uri, doc.format, blob)], doc.metadata, tenant_id, collection_id, pool, arq, blobs,
        settings,
    )


def _metadata_field(raw: str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise Unprocessable("the metadata field must be a JSON object") from None
    if not isinstance(value, dict):
        raise Unprocessable("the metadata field must be a JSON object")
    return value


async def _validate(filename: str, content_type: str | None, blob: StoredBlob) -> str:
    # Detection and the structure check read hostile bytes: in a killable process with a time
    # limit (rag.upload_check), never on this event loop or in a thread holding its GIL.
    try:
        return await check_file(filename, content_type, blob.head, blob.path, blob.size)
    except (UnsupportedMediaType, Unprocessable, PayloadTooLarge) as exc:
        exc.detail = f"{filename}: {exc.detail}"
        raise


def _discard(blobs: BlobStore, tenant_id: UUID, stored: list[StoredBlob]) -> None:
    """Remove bytes this request stored (not those another pending document already had)."""
    for blob in stored:
        if not blob.existed:
            blobs.delete(tenant_id, blob.sha256)


async def _register(
    items: list[_Item],
    metadata: dict[str, Any],
    tenant_id: UUID,
    collection_id: UUID,
    pool: asyncpg.Pool,
    arq: ArqRedis,
    blobs: BlobStore,
    settings: Settings,
) -> list[Accepted]:
    """One transaction for the batch, then the jobs (a job finding no row is a no-op).
    The storage quota is decided in that transaction, under the tenant's quota lock (413/409).
    Owns the stored bytes from here: removes them when the batch is not registered, and when a
    job cannot be queued, fails the documents left without one (never `queued` with no job)."""
    registered = []
    quota = QuotaCheck(settings, tenant_id)
    try:
        if (size := len(msgspec.json.encode(metadata))) > MAX_DOCUMENT_METADATA_BYTES:
            raise PayloadTooLarge(f"the metadata is {size} bytes as JSON; a document's metadata may hold at most "
                                  f"{MAX_DOCUMENT_METADATA_BYTES}")
        async with tenant_tx(pool, tenant_id) as conn:
            await quota.start(conn)
            for filename, title, uri, fmt, blob in items:
                doc, action = await documents.register_upload(
                    conn,
                    tenant_id=tenant_id,
                    collection_id=collection_id,
                    title=title,
                    uri=uri,
                    mime_type=FORMATS[fmt],
                    content_hash=blob.sha256,
                    size_bytes=blob.size,
                    metadata=metadata,
                )
                registered.append((filename, fmt, doc, action))
            await quota.finish(conn)
    except BaseException:
        _discard(blobs, tenant_id, [item[4] for item in items])
        raise
    accepted = []
    for index, ((filename, fmt, doc, action), item) in enumerate(zip(registered, items, strict=True)):
        job_id = None
        if action == "unchanged":
            _discard(blobs, tenant_id, [item[4]])  # already indexed: the bytes are not needed
        else:
            try:
                job_id = await enqueue_ingest(arq, tenant_id, doc.id, doc.content_hash or "", fmt)
            except (RedisError, OSError) as exc:
                await _not_queued(pool, blobs, tenant_id, registered[index:], items[index:])
                error = Unavailable("the ingestion queue is unavailable; upload again shortly")
                error.headers["Retry-After"] = "5"
                raise error from exc
        accepted.append(
            Accepted(document_id=doc.id, status=doc.status, action=action, job_id=job_id, filename=filename)
        )
    return accepted


async def _not_queued(
    pool: asyncpg.Pool, blobs: BlobStore, tenant_id: UUID,
    registered: list[tuple[str | None, str, Document, documents.UploadAction]], items: list[_Item],
) -> None:
    """Documents whose job could not be queued: failed with the reason, their bytes removed.
    ('pending' ones already have a queued job, and their bytes were stored before.)"""
    async with tenant_tx(pool, tenant_id) as conn:
        for _, _, doc, action in registered:
            if action in ("created", "replaced"):
                await documents.mark_failed(conn, doc.id, doc.content_hash or "", _NOT_QUEUED)
    _discard(blobs, tenant_id, [item[4] for (*_, action), item in zip(registered, items, strict=True)
                                if action in ("created", "replaced")])
