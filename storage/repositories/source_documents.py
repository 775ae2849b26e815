"""Documents that belong to a data source, identified by (source, uri) — the sync engine's
side of the documents table (uploads use `documents.register_upload`). Inside `tenant_tx`."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from storage.repositories.collections import bump_version

__all__ = ["KnownDocument", "count_documents", "delete_documents", "known_documents", "set_cursor",
           "upsert_document"]


class KnownDocument(msgspec.Struct, kw_only=True):
    id: UUID
    uri: str
    content_hash: str | None
    status: str
    source_cursor: dict[str, Any] | None


async def known_documents(conn: asyncpg.Connection, source_id: UUID) -> dict[str, KnownDocument]:
    rows = await conn.fetch(
        "SELECT id, uri, content_hash, status, source_cursor FROM documents WHERE source_id = $1", source_id
    )
    return {r["uri"]: msgspec.convert(dict(r), KnownDocument) for r in rows}


async def upsert_document(
    conn: asyncpg.Connection, *, tenant_id: UUID, collection_id: UUID, source_id: UUID, uri: str, title: str,
    mime_type: str, content_hash: str, size_bytes: int, metadata: dict[str, Any], cursor: dict[str, Any],
) -> tuple[UUID, bool]:
    """Insert or update the source's document at `uri` as 'processing' with the new content
    hash (the caller writes its chunks in the same transaction). Returns (id, created)."""
    row = await conn.fetchrow(
        """INSERT INTO documents (tenant_id, collection_id, source_id, uri, title, mime_type, content_hash,
                                  size_bytes, metadata, source_cursor, status, started_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'processing', now())
           ON CONFLICT (source_id, uri) WHERE source_id IS NOT NULL DO UPDATE
               SET collection_id = EXCLUDED.collection_id, title = EXCLUDED.title,
                   mime_type = EXCLUDED.mime_type, content_hash = EXCLUDED.content_hash,
                   size_bytes = EXCLUDED.size_bytes, metadata = EXCLUDED.metadata,
                   source_cursor = EXCLUDED.source_cursor, status = 'processing', error = NULL,
                   attempts = documents.attempts + 1, started_at = now(), finished_at = NULL, updated_at = now()
           RETURNING id, (xmax = 0) AS created""",
        tenant_id, collection_id, source_id, uri, title, mime_type, content_hash, size_bytes, metadata, cursor,
    )
    assert row is not None
    return row["id"], bool(row["created"])


async def set_cursor(conn: asyncpg.Connection, document_id: UUID, cursor: dict[str, Any]) -> None:
    await conn.execute("UPDATE documents SET source_cursor = $2 WHERE id = $1", document_id, cursor)


async def delete_documents(conn: asyncpg.Connection, source_id: UUID, uris: list[str]) -> int:
    """Delete the source's documents at `uris` (chunks and embeddings cascade)."""
    rows = await conn.fetch(
        "DELETE FROM documents WHERE source_id = $1 AND uri = ANY($2::text[]) RETURNING collection_id",
        source_id, uris,
    )
    for collection_id in {r["collection_id"] for r in rows}:
        await bump_version(conn, collection_id)
    return len(rows)


async def count_documents(conn: asyncpg.Connection, source_id: UUID) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM documents WHERE source_id = $1", source_id) or 0)
