"""Writing a document's chunks, embeddings and full-text vectors — in one transaction.

`replace_chunks` swaps a document's old chunks for new ones atomically: readers see either
the old version or the new one, never a half-indexed document. COPY cannot be used (tables
with row-level security refuse COPY FROM), so rows go in as arrays through `unnest`: one
round trip for the chunks whatever their number; embeddings are pipelined with executemany.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from uuid import UUID

import asyncpg
import numpy as np
import numpy.typing as npt

from storage.models import ChunkRow
from storage.repositories.collections import bump_version

__all__ = ["TSV_CONFIG", "neighbours", "replace_chunks"]

TSV_CONFIG = "english"


async def replace_chunks(
    conn: asyncpg.Connection, *, document_id: UUID, content_hash: str, chunks: Sequence[ChunkRow],
    embeddings: npt.NDArray[np.float32], embedder: str, title: str,
    timings: dict[str, float] | None = None,
) -> bool:
    """Replace the document's chunks and mark it ready. Returns False (writing nothing) when
    the document was deleted or its content changed since the job started (stale job).
    `timings` (ms per stage) are stored with the document, plus this write's own as `write`."""
    started = time.perf_counter()
    doc = await conn.fetchrow(
        "SELECT tenant_id, collection_id, content_hash FROM documents WHERE id = $1 FOR UPDATE",
        document_id,
    )
    if doc is None or doc["content_hash"] != content_hash:
        return False
    assert len(chunks) == len(embeddings)
    await conn.execute("DELETE FROM chunks WHERE document_id = $1", document_id)
    ids = await conn.fetch(
        f"""INSERT INTO chunks (tenant_id, collection_id, document_id, ord, text, heading, page,
                                char_start, char_end, token_count, tsv)
            SELECT $1, $2, $3, t.ord, t.text, t.heading, t.page, t.cs, t.ce, t.tc,
                   setweight(to_tsvector('{TSV_CONFIG}', coalesce($4, '') || ' ' || coalesce(t.heading, '')), 'B')
                   || to_tsvector('{TSV_CONFIG}', t.text)
            FROM unnest($5::int[], $6::text[], $7::text[], $8::int[], $9::int[], $10::int[], $11::int[])
                 AS t(ord, text, heading, page, cs, ce, tc)
            ORDER BY t.ord
            RETURNING id, ord""",
        doc["tenant_id"], doc["collection_id"], document_id, title,
        [c.ord for c in chunks], [c.text for c in chunks], [c.heading for c in chunks],
        [c.page for c in chunks], [c.char_start for c in chunks], [c.char_end for c in chunks],
        [c.token_count for c in chunks],
    )
    id_by_ord = {r["ord"]: r["id"] for r in ids}
    if chunks:
        # executemany pipelines the rows in one go; each vector travels in pgvector's binary form.
        dim = int(embeddings.shape[1])
        await conn.executemany(
            """INSERT INTO embeddings (chunk_id, tenant_id, collection_id, embedder, dim, embedding)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            [(id_by_ord[c.ord], doc["tenant_id"], doc["collection_id"], embedder, dim, vector)
             for c, vector in zip(chunks, embeddings, strict=True)],
        )
    stages = {**(timings or {}), "write": (time.perf_counter() - started) * 1000}
    await conn.execute(
        """UPDATE documents SET status = 'ready', error = NULL, chunk_count = $2, timings = $3,
               finished_at = now(), updated_at = now() WHERE id = $1""",
        document_id, len(chunks), {k: round(v, 1) for k, v in stages.items()},
    )
    await bump_version(conn, doc["collection_id"])
    return True


async def neighbours(conn: asyncpg.Connection, chunk_id: int, before: int, after: int) -> list[asyncpg.Record]:
    """The chunk and its neighbours in the same document (for read_document)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT c.* FROM chunks c JOIN chunks hit ON hit.document_id = c.document_id
           WHERE hit.id = $1 AND c.ord BETWEEN hit.ord - $2 AND hit.ord + $3 ORDER BY c.ord""",
        chunk_id, before, after,
    )
    return rows
