"""Documents of a tenant and their lifecycle: queued → processing → ready | failed.

All functions run inside `tenant_tx`. Identity of an upload is (collection, uri): the same
content again is a no-op, other content replaces the document's chunks when its job runs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import asyncpg

from core.errors import NotFound
from storage.models import Document, DocumentStatus
from storage.repositories._rows import to_struct, to_structs
from storage.repositories.collections import bump_version

__all__ = ["UploadAction", "delete_document", "get_document", "get_documents", "list_documents",
           "mark_failed", "mark_processing", "other_pending_with_hash", "register_upload", "release_unfinished",
           "requeue"]

# unchanged: same bytes already indexed (no-op); pending: same bytes already queued or being
# processed (the caller re-enqueues: job ids dedupe); replaced: new bytes for a known uri.
UploadAction = Literal["created", "replaced", "unchanged", "pending"]


async def register_upload(
    conn: asyncpg.Connection, *, tenant_id: UUID, collection_id: UUID, title: str, uri: str | None,
    mime_type: str, content_hash: str, size_bytes: int, metadata: dict[str, Any],
) -> tuple[Document, UploadAction]:
    """Insert, replace or recognise an unchanged upload (caller holds the transaction).
    Concurrent uploads of one uri agree: the later one waits for the first and then replaces
    it (or finds it unchanged/pending), instead of failing on the unique index."""
    for _ in range(2):
        existing = await _find_existing(conn, collection_id, uri, content_hash)
        if existing is not None:
            return await _update_existing(conn, existing, title, mime_type, content_hash, size_bytes, metadata)
        row = await conn.fetchrow(
            """INSERT INTO documents (tenant_id, collection_id, title, uri, mime_type, content_hash,
                                      size_bytes, metadata)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
               ON CONFLICT (collection_id, uri) WHERE uri IS NOT NULL AND source_id IS NULL DO NOTHING
               RETURNING *""",
            tenant_id, collection_id, title, uri, mime_type, content_hash, size_bytes, metadata,
        )
        if row is not None:
            return to_struct(row, Document), "created"
        # Another transaction inserted this uri since we looked (and has committed): look again.
    raise RuntimeError(f"could not register {uri!r}: it keeps changing concurrently")


async def _find_existing(
    conn: asyncpg.Connection, collection_id: UUID, uri: str | None, content_hash: str
) -> asyncpg.Record | None:
    if uri is not None:
        found: asyncpg.Record | None = await conn.fetchrow(
            "SELECT * FROM documents WHERE collection_id = $1 AND uri = $2 AND source_id IS NULL FOR UPDATE",
            collection_id, uri,
        )
        return found
    found = await conn.fetchrow(
        """SELECT * FROM documents WHERE collection_id = $1 AND uri IS NULL AND content_hash = $2
           ORDER BY created_at LIMIT 1 FOR UPDATE""",
        collection_id, content_hash,
    )
    return found


async def _update_existing(
    conn: asyncpg.Connection, existing: asyncpg.Record, title: str, mime_type: str, content_hash: str,
    size_bytes: int, metadata: dict[str, Any],
) -> tuple[Document, UploadAction]:
    if existing["content_hash"] == content_hash and existing["status"] == "ready":
        return to_struct(existing, Document), "unchanged"
    if existing["content_hash"] == content_hash and existing["status"] != "failed":
        return to_struct(existing, Document), "pending"
    row = await conn.fetchrow(
        """UPDATE documents SET title = $2, mime_type = $3, content_hash = $4, size_bytes = $5,
               metadata = $6, status = 'queued', error = NULL, attempts = 0, updated_at = now(),
               started_at = NULL, finished_at = NULL
           WHERE id = $1 RETURNING *""",
        existing["id"], title, mime_type, content_hash, size_bytes, metadata,
    )
    assert row is not None
    return to_struct(row, Document), "replaced"


async def get_document(conn: asyncpg.Connection, document_id: UUID) -> Document:
    row = await conn.fetchrow("SELECT * FROM documents WHERE id = $1", document_id)
    if row is None:
        raise NotFound("no such document")
    return to_struct(row, Document)


async def get_documents(conn: asyncpg.Connection, document_ids: list[UUID]) -> list[Document]:
    rows = await conn.fetch("SELECT * FROM documents WHERE id = ANY($1::uuid[])", document_ids)
    return to_structs(rows, Document)


async def list_documents(
    conn: asyncpg.Connection, *, collection_id: UUID | None, status: DocumentStatus | None,
    metadata: dict[str, Any] | None, after: tuple[datetime, UUID] | None, limit: int,
) -> list[Document]:
    """Keyset pagination on (created_at, id) with optional filters."""
    rows = await conn.fetch(
        """SELECT * FROM documents
           WHERE ($1::uuid IS NULL OR collection_id = $1)
             AND ($2::text IS NULL OR status = $2)
             AND ($3::jsonb IS NULL OR metadata @> $3::jsonb)
             AND ($4::timestamptz IS NULL OR (created_at, id) > ($4, $5::uuid))
           ORDER BY created_at, id LIMIT $6""",
        collection_id, status, metadata,
        after[0] if after else None, after[1] if after else None, limit,
    )
    return to_structs(rows, Document)


async def delete_document(conn: asyncpg.Connection, document_id: UUID) -> Document:
    """Chunks and embeddings go with it (cascade): search stops returning it at commit."""
    row = await conn.fetchrow("DELETE FROM documents WHERE id = $1 RETURNING *", document_id)
    if row is None:
        raise NotFound("no such document")
    await bump_version(conn, row["collection_id"])
    return to_struct(row, Document)


async def mark_processing(conn: asyncpg.Connection, document_id: UUID, content_hash: str) -> Document | None:
    """Claim a document for its job; None when the job is stale (content changed or deleted)."""
    row = await conn.fetchrow(
        """UPDATE documents SET status = 'processing', attempts = attempts + 1,
               started_at = coalesce(started_at, now()), updated_at = now()
           WHERE id = $1 AND content_hash = $2 AND status <> 'ready' RETURNING *""",
        document_id, content_hash,
    )
    return to_struct(row, Document) if row else None


async def mark_failed(conn: asyncpg.Connection, document_id: UUID, content_hash: str, error: str) -> None:
    await conn.execute(
        """UPDATE documents SET status = 'failed', error = $3, finished_at = now(), updated_at = now()
           WHERE id = $1 AND content_hash = $2""",
        document_id, content_hash, error[:2000],
    )


async def requeue(conn: asyncpg.Connection, document_id: UUID, content_hash: str, error: str) -> None:
    """A transient failure: back to queued with the reason, awaiting the retry."""
    await conn.execute(
        """UPDATE documents SET status = 'queued', error = $3, updated_at = now()
           WHERE id = $1 AND content_hash = $2""",
        document_id, content_hash, error[:2000],
    )


async def other_pending_with_hash(conn: asyncpg.Connection, content_hash: str, document_id: UUID) -> bool:
    """Does another queued/processing document share these bytes (and so the stored upload)?"""
    found = await conn.fetchval(
        """SELECT 1 FROM documents WHERE content_hash = $1 AND id <> $2
           AND status IN ('queued', 'processing') LIMIT 1""",
        content_hash, document_id,
    )
    return bool(found)


async def release_unfinished(
    conn: asyncpg.Connection, document_id: UUID, content_hash: str, status: Literal["queued", "failed"], error: str
) -> bool:
    """A job stopped before finishing (worker shutdown, its own deadline): its claim is given up,
    as `queued` for the job's re-run or `failed`. Only a claim still held is changed: a document
    written (ready) or replaced meanwhile is left as it is."""
    row = await conn.fetchval(
        """UPDATE documents SET status = $3, error = $4, updated_at = now(),
               finished_at = CASE WHEN $3 = 'failed' THEN now() ELSE finished_at END
           WHERE id = $1 AND content_hash = $2 AND status = 'processing' RETURNING 1""",
        document_id, content_hash, status, error[:2000],
    )
    return row is not None
