"""Collections of a tenant (run inside `tenant_tx`)."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from core.errors import Conflict, NotFound
from storage.models import Collection
from storage.repositories._rows import to_struct, to_structs

__all__ = ["bump_version", "create_collection", "delete_collection", "get_collection",
           "list_collections", "update_collection"]

_COLUMNS = "id, tenant_id, name, description, version, active_embedder, created_at"


async def create_collection(conn: asyncpg.Connection, tenant_id: UUID, name: str, description: str) -> Collection:
    try:
        row = await conn.fetchrow(
            f"INSERT INTO collections (tenant_id, name, description) VALUES ($1, $2, $3) RETURNING {_COLUMNS}",
            tenant_id, name, description,
        )
    except asyncpg.UniqueViolationError:
        raise Conflict(f"a collection named {name!r} already exists") from None
    assert row is not None
    return to_struct(row, Collection)


async def get_collection(conn: asyncpg.Connection, collection_id: UUID) -> Collection:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM collections WHERE id = $1", collection_id)
    if row is None:
        raise NotFound("no such collection")
    return to_struct(row, Collection)


async def list_collections(
    conn: asyncpg.Connection, after: str | None, limit: int
) -> list[Collection]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM collections WHERE name > coalesce($1, '') ORDER BY name LIMIT $2",
        after, limit,
    )
    return to_structs(rows, Collection)


async def update_collection(
    conn: asyncpg.Connection, collection_id: UUID, name: str | None, description: str | None
) -> Collection:
    try:
        row = await conn.fetchrow(
            f"""UPDATE collections SET name = coalesce($2, name), description = coalesce($3, description)
                WHERE id = $1 RETURNING {_COLUMNS}""",
            collection_id, name, description,
        )
    except asyncpg.UniqueViolationError:
        raise Conflict(f"a collection named {name!r} already exists") from None
    if row is None:
        raise NotFound("no such collection")
    return to_struct(row, Collection)


async def delete_collection(conn: asyncpg.Connection, collection_id: UUID) -> None:
    """Deletes its documents, chunks and embeddings too (ON DELETE CASCADE)."""
    status = await conn.execute("DELETE FROM collections WHERE id = $1", collection_id)
    if status == "DELETE 0":
        raise NotFound("no such collection")


async def bump_version(conn: asyncpg.Connection, collection_id: UUID) -> int:
    """Content changed: caches keyed on the version are invalid from now on."""
    version = await conn.fetchval(
        "UPDATE collections SET version = version + 1 WHERE id = $1 RETURNING version", collection_id
    )
    return int(version or 0)
