"""Documents: upload (multipart files or JSON text), get, list, delete, progress over SSE
(bounded and pushed: api/documents/progress.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream

from api import paths
from api.auth import require_role
from api.deps import DbPool, ReadPool
from api.documents.progress import progress_stream
from api.documents.schemas import AcceptedBatch, DocumentPage
from api.documents.uploads import accept_json, accept_multipart
from api.json_bodies import refuse_nul
from api.metadata_filters import MAX_FILTER_BYTES, MAX_FILTER_DEPTH, MAX_FILTER_ENTRIES, filter_problem
from api.pagination import decode_cursor, encode_cursor
from core.errors import BadRequest, PayloadTooLarge, Unprocessable, UnsupportedMediaType
from core.settings import Settings
from storage.models import Document, DocumentStatus, Principal
from storage.repositories import documents
from storage.tenancy import tenant_tx

AnyRequest = Request[Principal, UUID, State]
Limit = Annotated[int, QueryParameter(ge=1, le=200, description="page size")]
_MAX_EVENT_IDS = 100


class DocumentController(Controller):
    tags = ["documents"]

    @post(paths.COLLECTION_DOCUMENTS, operation_id="uploadDocuments", guards=[require_role("member")],
          request_max_body_size=None, status_code=202)
    async def upload(self, collection_id: FromPath[UUID], request: AnyRequest, pool: DbPool) -> AcceptedBatch:
        """Upload files (multipart/form-data; any number of parts with a filename, optional `metadata`
        JSON field) or one text document (application/json `{text, title, uri, format, metadata}`).
        Answers 202 with document and job ids; progress via the document or events endpoints."""
        state = request.app.state
        settings: Settings = state.settings
        content_type = request.headers.get("content-type", "")
        common: dict[str, Any] = {"tenant_id": request.user.tenant_id, "collection_id": collection_id,
                                  "pool": pool, "arq": state.redis, "blobs": state.blobs}
        if content_type.startswith("multipart/form-data"):
            accepted = await accept_multipart(content_type, request.stream(), settings=settings, **common)
        elif content_type.split(";")[0].strip() == "application/json":
            body = await _read_limited(request.stream(), settings.max_upload_bytes)
            accepted = await accept_json(body, settings=settings, **common)
        else:
            raise UnsupportedMediaType("send multipart/form-data (files) or application/json (text)")
        return AcceptedBatch(documents=accepted)

    @get(paths.DOCUMENT, operation_id="getDocument")
    async def get_document(self, document_id: FromPath[UUID], request: AnyRequest, pool: DbPool) -> Document:
        """A document: status, error, chunk count, timings."""
        async with tenant_tx(pool, request.user.tenant_id, readonly=True) as conn:
            return await documents.get_document(conn, document_id)

    @get(paths.DOCUMENTS, operation_id="listDocuments")
    async def list_documents(
        self, request: AnyRequest, read_pool: ReadPool, limit: Limit = 50,
        cursor: Annotated[str | None, QueryParameter()] = None,
        collection_id: Annotated[UUID | None, QueryParameter()] = None,
        status: Annotated[DocumentStatus | None, QueryParameter()] = None,
        metadata: Annotated[str | None, QueryParameter(
            description=f"JSON object the metadata must contain (at most {MAX_FILTER_BYTES} bytes, "
                        f"{MAX_FILTER_ENTRIES} keys and items, {MAX_FILTER_DEPTH} levels)",
            max_length=2 * MAX_FILTER_BYTES)] = None,
    ) -> DocumentPage:
        """List documents, oldest first (keyset pagination), filtered by collection, status, metadata."""
        after = _decode_document_cursor(cursor) if cursor else None
        meta = _decode_metadata(metadata) if metadata else None
        async with tenant_tx(read_pool, request.user.tenant_id, readonly=True) as conn:
            items = await documents.list_documents(conn, collection_id=collection_id, status=status,
                                                   metadata=meta, after=after, limit=limit + 1)
        more = len(items) > limit
        items = items[:limit]
        next_cursor = encode_cursor([items[-1].created_at.isoformat(), str(items[-1].id)]) if more else None
        return DocumentPage(items=items, next_cursor=next_cursor)

    @delete(paths.DOCUMENT, operation_id="deleteDocument", guards=[require_role("member")])
    async def delete_document(self, document_id: FromPath[UUID], request: AnyRequest, pool: DbPool) -> None:
        """Delete a document; search stops returning it at once."""
        async with tenant_tx(pool, request.user.tenant_id) as conn:
            await documents.delete_document(conn, document_id)

    @get(paths.DOCUMENT_EVENTS, operation_id="documentEvents", media_type="text/event-stream")
    async def events(self, document_id: FromPath[UUID], request: AnyRequest, pool: DbPool) -> Stream:
        """Progress of one document as Server-Sent Events (`status` events, then `done`; a retryable
        `error` with code `shutting_down` when the server stops first, or `stream_expired` after
        QUARRY_EVENT_STREAM_MAX_S: reconnect). 429 when the tenant already has
        QUARRY_EVENT_STREAMS_PER_TENANT progress streams open."""
        return await progress_stream(request.app.state, pool, request.user.tenant_id, [document_id])

    @get(paths.DOCUMENTS_EVENTS, operation_id="documentsEvents", media_type="text/event-stream")
    async def batch_events(
        self, request: AnyRequest, pool: DbPool,
        ids: Annotated[str, QueryParameter(description="comma-separated document ids (at most 100)")],
    ) -> Stream:
        """Progress of a batch of documents as Server-Sent Events (as for one document)."""
        try:
            document_ids = [UUID(x) for x in ids.split(",") if x.strip()]
        except ValueError:
            raise BadRequest("ids must be comma-separated document UUIDs") from None
        if not 0 < len(document_ids) <= _MAX_EVENT_IDS:
            raise Unprocessable(f"give between 1 and {_MAX_EVENT_IDS} document ids")
        return await progress_stream(request.app.state, pool, request.user.tenant_id, document_ids)


async def _read_limited(stream: AsyncIterator[bytes], limit: int) -> bytes:
    parts, size = [], 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


def _decode_document_cursor(cursor: str) -> tuple[datetime, UUID]:
    values = decode_cursor(cursor)
    try:
        return datetime.fromisoformat(values[0]), UUID(values[1])
    except (ValueError, IndexError, TypeError):
        raise BadRequest("invalid cursor") from None


def _decode_metadata(raw: str) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        value = None
    if not isinstance(value, dict):
        raise BadRequest("metadata must be a JSON object, e.g. {\"team\": \"search\"}")
    if problem := filter_problem(value):
        raise Unprocessable(problem)
    refuse_nul(value)
    return value
