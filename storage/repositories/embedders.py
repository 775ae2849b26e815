"""Embedders beyond the built-in default, each collection's active embedder, and embedding
backfills (re-embedding a collection side by side, then switching over atomically).

How search honours the switch: `active_embedders(conn, collection_ids)` gives each
collection's active embedder name and dim; the query must be embedded by that embedder
(`get_spec` says how to build it) and matched against rows with that name and dim.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Literal
from uuid import UUID

import asyncpg
import msgspec
import numpy as np
import numpy.typing as npt

from core.errors import Conflict, NotFound
from storage.repositories._rows import to_struct
from storage.repositories.collections import bump_version

__all__ = [
    "BUILTIN", "Backfill", "EmbedderSpec", "active_embedders", "complete_backfill", "drop_embeddings",
    "ensure_hnsw_index",
    "fail_backfill", "get_spec", "hnsw_index_name", "insert_embeddings", "missing_chunks", "record_backfill_progress",
    "register_spec", "start_backfill", "switch_active",
]

EmbedderKind = Literal["minilm", "openai"]


class EmbedderSpec(msgspec.Struct, kw_only=True, frozen=True):
    name: str
    kind: EmbedderKind
    model: str = ""
    dim: int
    base_url: str | None = None


BUILTIN = {"minilm-l6-v2": EmbedderSpec(name="minilm-l6-v2", kind="minilm", dim=384)}


class Backfill(msgspec.Struct, kw_only=True):
    id: UUID
    tenant_id: UUID
    collection_id: UUID
    embedder: str
    status: Literal["running", "failed", "completed"]
    total_chunks: int
    embedded: int
    previous_embedder: str | None
    error: str | None
    dagster_run_id: str | None
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    switched_at: datetime | None


async def register_spec(conn: asyncpg.Connection, spec: EmbedderSpec) -> None:
    """Record how to build the embedder named `spec.name`; a name keeps its kind and dim forever."""
    if spec.name in BUILTIN:
        if BUILTIN[spec.name].dim != spec.dim:
            raise Conflict(f"embedder {spec.name!r} has dim {BUILTIN[spec.name].dim}")
        return
    # Same name, kind and dim: the endpoint may have moved (base_url is updated).
    await conn.execute(
        """INSERT INTO embedders (name, kind, model, dim, base_url) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (name) DO UPDATE SET base_url = EXCLUDED.base_url
           WHERE embedders.kind = EXCLUDED.kind AND embedders.dim = EXCLUDED.dim""",
        spec.name, spec.kind, spec.model, spec.dim, spec.base_url,
    )
    stored = await get_spec(conn, spec.name)
    if stored is None or stored.dim != spec.dim or stored.kind != spec.kind:
        raise Conflict(f"an embedder named {spec.name!r} is already registered with another kind or dim")


async def get_spec(conn: asyncpg.Connection, name: str) -> EmbedderSpec | None:
    if name in BUILTIN:
        return BUILTIN[name]
    row = await conn.fetchrow("SELECT name, kind, model, dim, base_url FROM embedders WHERE name = $1", name)
    return to_struct(row, EmbedderSpec) if row else None


async def active_embedders(conn: asyncpg.Connection, collection_ids: list[UUID]) -> dict[UUID, tuple[str, int]]:
    """collection id -> (active embedder name, dim) for search."""
    rows = await conn.fetch(
        """SELECT c.id, c.active_embedder, coalesce(e.dim, CASE WHEN c.active_embedder = 'minilm-l6-v2'
                                                               THEN 384 END) AS dim
           FROM collections c LEFT JOIN embedders e ON e.name = c.active_embedder
           WHERE c.id = ANY($1::uuid[])""",
        collection_ids,
    )
    return {r["id"]: (r["active_embedder"], int(r["dim"] or 0)) for r in rows}


# --- backfills (inside tenant_tx) -------------------------------------------------------------

_BACKFILL = """id, tenant_id, collection_id, embedder, status, total_chunks, embedded, previous_embedder, error,
    dagster_run_id, started_at, updated_at, finished_at, switched_at"""


async def start_backfill(
    conn: asyncpg.Connection, *, tenant_id: UUID, collection_id: UUID, embedder: str, dagster_run_id: str | None
) -> Backfill:
    """Resume the collection's unfinished backfill to `embedder`, or start one. Another
    embedder's backfill still running is a conflict."""
    collection = await conn.fetchrow(
        "SELECT active_embedder FROM collections WHERE id = $1 FOR UPDATE", collection_id
    )
    if collection is None:
        raise NotFound("no such collection")
    running = await conn.fetchrow(
        f"SELECT {_BACKFILL} FROM embedding_backfills WHERE collection_id = $1 AND status = 'running'", collection_id
    )
    if running is not None and running["embedder"] != embedder:
        raise Conflict(f"a backfill of this collection to {running['embedder']!r} is running")
    total = await conn.fetchval("SELECT count(*) FROM chunks WHERE collection_id = $1", collection_id)
    if running is None:
        resumable = await conn.fetchval(
            """SELECT id FROM embedding_backfills WHERE collection_id = $1 AND embedder = $2 AND status = 'failed'
               ORDER BY started_at DESC LIMIT 1""",
            collection_id, embedder,
        )
        if resumable is not None:
            row = await conn.fetchrow(
                f"""UPDATE embedding_backfills SET status = 'running', error = NULL, finished_at = NULL,
                        total_chunks = $2, dagster_run_id = $3, updated_at = now()
                    WHERE id = $1 RETURNING {_BACKFILL}""",
                resumable, total, dagster_run_id,
            )
        else:
            row = await conn.fetchrow(
                f"""INSERT INTO embedding_backfills (tenant_id, collection_id, embedder, total_chunks,
                                                     previous_embedder, dagster_run_id)
                    VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_BACKFILL}""",
                tenant_id, collection_id, embedder, total, collection["active_embedder"], dagster_run_id,
            )
    else:
        row = await conn.fetchrow(
            f"""UPDATE embedding_backfills SET total_chunks = $2, dagster_run_id = $3, updated_at = now()
                WHERE id = $1 RETURNING {_BACKFILL}""",
            running["id"], total, dagster_run_id,
        )
    assert row is not None
    return to_struct(row, Backfill)


async def missing_chunks(
    conn: asyncpg.Connection, collection_id: UUID, embedder: str, after_id: int, limit: int
) -> list[tuple[int, str]]:
    """Chunks of the collection without an embedding by `embedder`, by id (resumable)."""
    rows = await conn.fetch(
        """SELECT c.id, c.text FROM chunks c
           WHERE c.collection_id = $1 AND c.id > $3
             AND NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.chunk_id = c.id AND e.embedder = $2)
           ORDER BY c.id LIMIT $4""",
        collection_id, embedder, after_id, limit,
    )
    return [(int(r["id"]), str(r["text"])) for r in rows]


async def insert_embeddings(
    conn: asyncpg.Connection, chunk_ids: list[int], vectors: npt.NDArray[np.float32], embedder: str
) -> None:
    """Side-by-side rows for `embedder`; chunks deleted meanwhile are skipped."""
    dim = int(vectors.shape[1])
    await conn.executemany(
        """INSERT INTO embeddings (chunk_id, tenant_id, collection_id, embedder, dim, embedding)
           SELECT c.id, c.tenant_id, c.collection_id, $2, $3, $4 FROM chunks c WHERE c.id = $1
           ON CONFLICT (chunk_id, embedder) DO NOTHING""",
        [(chunk_id, embedder, dim, vector) for chunk_id, vector in zip(chunk_ids, vectors, strict=True)],
    )


async def record_backfill_progress(conn: asyncpg.Connection, backfill_id: UUID, embedded: int) -> None:
    await conn.execute(
        "UPDATE embedding_backfills SET embedded = embedded + $2, updated_at = now() WHERE id = $1",
        backfill_id, embedded,
    )


async def fail_backfill(conn: asyncpg.Connection, backfill_id: UUID, error: str) -> None:
    await conn.execute(
        """UPDATE embedding_backfills SET status = 'failed', error = $2, finished_at = now(), updated_at = now()
           WHERE id = $1 AND status = 'running'""",
        backfill_id, error[:1000],
    )


async def complete_backfill(conn: asyncpg.Connection, backfill_id: UUID) -> None:
    """Done without switching (the caller asked to switch later)."""
    await conn.execute(
        """UPDATE embedding_backfills SET status = 'completed', finished_at = now(), updated_at = now()
           WHERE id = $1""", backfill_id,
    )


async def switch_active(conn: asyncpg.Connection, backfill_id: UUID, collection_id: UUID, embedder: str) -> bool:
    """Make `embedder` the collection's active one — only if every chunk has its embedding
    (checked under the collection's row lock, which writers of chunks also take). False
    (nothing changed) when chunks are still missing."""
    await conn.execute("SELECT 1 FROM collections WHERE id = $1 FOR UPDATE", collection_id)
    missing = await conn.fetchval(
        """SELECT count(*) FROM chunks c WHERE c.collection_id = $1
           AND NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.chunk_id = c.id AND e.embedder = $2)""",
        collection_id, embedder,
    )
    if missing:
        return False
    await conn.execute("UPDATE collections SET active_embedder = $2 WHERE id = $1", collection_id, embedder)
    await bump_version(conn, collection_id)
    await conn.execute(
        """UPDATE embedding_backfills SET status = 'completed', finished_at = now(), switched_at = now(),
               updated_at = now() WHERE id = $1""",
        backfill_id,
    )
    return True


async def drop_embeddings(conn: asyncpg.Connection, collection_id: UUID, embedder: str) -> int:
    """Retire an embedder's rows of a collection (never the active one's)."""
    active = await conn.fetchval("SELECT active_embedder FROM collections WHERE id = $1", collection_id)
    if active == embedder:
        raise Conflict("this is the collection's active embedder; switch to another one first")
    status: str = await conn.execute(
        "DELETE FROM embeddings WHERE collection_id = $1 AND embedder = $2", collection_id, embedder
    )
    return int(status.split()[-1])


# --- index (migration role, outside any transaction) -------------------------------------------

def hnsw_index_name(embedder: str) -> str:
    slug = "".join(ch if ch.isalnum() else "_" for ch in embedder.lower())[:40]
    digest = hashlib.sha256(embedder.encode()).hexdigest()[:8]
    return f"embeddings_hnsw_{slug}_{digest}"


async def ensure_hnsw_index(owner_conn: asyncpg.Connection, embedder: str, dim: int) -> str:
    """The embedder's partial HNSW index, built CONCURRENTLY (writes go on meanwhile). An
    index left invalid by an interrupted build is dropped and built again."""
    if embedder == "minilm-l6-v2":
        return "embeddings_hnsw_minilm_l6_v2"  # made by migration 0003
    name = hnsw_index_name(embedder)
    valid = await owner_conn.fetchval(
        """SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
           WHERE c.relname = $1""", name,
    )
    if valid is False:
        await owner_conn.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')
    if not valid:
        literal = await owner_conn.fetchval("SELECT quote_literal($1)", embedder)
        await owner_conn.execute(
            f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{name}" ON embeddings '
            f"USING hnsw ((embedding::vector({int(dim)})) vector_cosine_ops) WITH (m = 16, ef_construction = 64) "
            f"WHERE embedder = {literal}"
        )
    return name
