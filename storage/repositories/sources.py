"""Data sources of a tenant (run inside `tenant_tx`), and the cross-tenant view the Dagster
sensor reads as the migration role."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import asyncpg
import msgspec

from core.errors import Conflict, NotFound, Unprocessable
from storage.repositories._rows import to_struct, to_structs

__all__ = [
    "ScheduledSource", "Source", "SourceKind", "configs_with_fields", "create_source", "delete_source", "end_session",
    "get_source", "list_sources", "lock_holders", "lock_key", "replace_config", "scheduled_sources", "set_cursor",
    "update_source",
]

SourceKind = Literal["folder", "website", "s3"]

_COLUMNS = ("id, tenant_id, collection_id, name, kind, config, schedule, enabled, cursor, created_at, "
            "updated_at, last_scheduled_at")


class Source(msgspec.Struct, kw_only=True):
    id: UUID
    tenant_id: UUID
    collection_id: UUID
    name: str
    kind: SourceKind
    config: dict[str, Any]
    schedule: str | None
    enabled: bool
    cursor: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    last_scheduled_at: datetime | None


def lock_key(source_id: UUID | str) -> str:
    """Text hashed by Postgres into the advisory-lock key of a source's syncs."""
    return f"quarry-sync:{source_id}"


def _translate(exc: BaseException, name: str | None) -> BaseException:
    if isinstance(exc, asyncpg.UniqueViolationError):
        return Conflict(f"a source named {name!r} already exists")
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        return Unprocessable("no such collection", errors=[{"field": "collection_id", "message": "no such collection"}])
    return exc


async def create_source(
    conn: asyncpg.Connection, *, tenant_id: UUID, collection_id: UUID, name: str, kind: SourceKind,
    config: dict[str, Any], schedule: str | None, enabled: bool,
) -> Source:
    try:
        row = await conn.fetchrow(
            f"""INSERT INTO sources (tenant_id, collection_id, name, kind, config, schedule, enabled)
                VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_COLUMNS}""",
            tenant_id, collection_id, name, kind, config, schedule, enabled,
        )
    except (asyncpg.UniqueViolationError, asyncpg.ForeignKeyViolationError) as exc:
        raise _translate(exc, name) from None
    assert row is not None
    return to_struct(row, Source)


async def get_source(conn: asyncpg.Connection, source_id: UUID, *, for_update: bool = False) -> Source:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM sources WHERE id = $1{lock}", source_id)
    if row is None:
        raise NotFound("no such source")
    return to_struct(row, Source)


async def list_sources(
    conn: asyncpg.Connection, *, collection_id: UUID | None, after: str | None, limit: int
) -> list[Source]:
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM sources
            WHERE ($1::uuid IS NULL OR collection_id = $1) AND name > coalesce($2, '')
            ORDER BY name LIMIT $3""",
        collection_id, after, limit,
    )
    return to_structs(rows, Source)


async def update_source(conn: asyncpg.Connection, source_id: UUID, changes: dict[str, Any]) -> Source:
    """Apply `changes` (column -> value; only known columns). A changed schedule restarts
    the schedule's clock: the next tick after now is the first one queued."""
    allowed = {"name", "collection_id", "config", "schedule", "enabled"}
    unknown = set(changes) - allowed
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    if not changes:
        return await get_source(conn, source_id)
    sets = [f"{column} = ${i}" for i, column in enumerate(changes, start=2)]
    if "schedule" in changes:
        sets.append("last_scheduled_at = NULL")
    try:
        row = await conn.fetchrow(
            f"UPDATE sources SET {', '.join(sets)}, updated_at = now() WHERE id = $1 RETURNING {_COLUMNS}",
            source_id, *changes.values(),
        )
    except (asyncpg.UniqueViolationError, asyncpg.ForeignKeyViolationError) as exc:
        raise _translate(exc, changes.get("name")) from None
    if row is None:
        raise NotFound("no such source")
    return to_struct(row, Source)


async def delete_source(conn: asyncpg.Connection, source_id: UUID, *, delete_documents: bool) -> int:
    """Delete the source (its run history goes with it). Refused while a sync of it runs.
    Returns how many documents were deleted with it."""
    busy = not await conn.fetchval(
        "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))", lock_key(source_id)
    )
    if busy:
        raise Conflict("a sync of this source is running; try again when it has finished")
    deleted = 0
    if delete_documents:
        rows = await conn.fetch(
            "DELETE FROM documents WHERE source_id = $1 RETURNING collection_id", source_id
        )
        deleted = len(rows)
        for collection_id in {r["collection_id"] for r in rows}:
            await conn.execute("UPDATE collections SET version = version + 1 WHERE id = $1", collection_id)
    status = await conn.execute("DELETE FROM sources WHERE id = $1", source_id)
    if status == "DELETE 0":
        raise NotFound("no such source")
    return deleted


async def set_cursor(conn: asyncpg.Connection, source_id: UUID, cursor: dict[str, Any]) -> None:
    await conn.execute("UPDATE sources SET cursor = $2 WHERE id = $1", source_id, cursor)


class ScheduledSource(msgspec.Struct, kw_only=True):
    """What the sensor needs of every source, across tenants."""

    id: UUID
    tenant_id: UUID
    tenant_name: str
    name: str
    kind: SourceKind
    schedule: str | None
    enabled: bool
    created_at: datetime
    updated_at: datetime
    last_scheduled_at: datetime | None


async def scheduled_sources(conn: asyncpg.Connection) -> list[ScheduledSource]:
    """Every source of every tenant (the migration role: see 0007_sources.sql)."""
    rows = await conn.fetch(
        """SELECT s.id, s.tenant_id, t.name AS tenant_name, s.name, s.kind, s.schedule, s.enabled,
                  s.created_at, s.updated_at, s.last_scheduled_at
           FROM sources s JOIN tenants t ON t.id = s.tenant_id ORDER BY s.id"""
    )
    return to_structs(rows, ScheduledSource)


async def configs_with_fields(owner_conn: asyncpg.Connection, fields: list[str]) -> list[tuple[UUID, dict[str, Any]]]:
    """(id, config) of every source, of every tenant, whose config has any of `fields`, locked
    for update (the migration role, in a transaction: `quarry sources rotate-secrets`)."""
    rows = await owner_conn.fetch("SELECT id, config FROM sources WHERE config ?| $1::text[] ORDER BY id FOR UPDATE",
                                  fields)
    return [(r["id"], r["config"]) for r in rows]


async def replace_config(owner_conn: asyncpg.Connection, source_id: UUID, config: dict[str, Any]) -> None:
    """A new config without touching updated_at (a re-encryption changes nothing a user set)."""
    await owner_conn.execute("UPDATE sources SET config = $2 WHERE id = $1", source_id, config)


async def lock_holders(owner_conn: asyncpg.Connection, source_ids: list[str]) -> list[tuple[str, int, str]]:
    """(source id, pid, application_name) of each session holding a source's sync lock, read from
    pg_locks: looking, not taking the lock (taking it could make a starting run fail as busy)."""
    rows = await owner_conn.fetch(
        # A bigint advisory lock shows in pg_locks as classid = high 32 bits, objid = low 32 bits.
        """SELECT s.id, l.pid, coalesce(a.application_name, '') AS application_name
           FROM unnest($1::text[], $2::text[]) AS s(id, lock_key)
           CROSS JOIN LATERAL (SELECT hashtextextended(s.lock_key, 0) AS k) h
           JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND l.classid = ((h.k >> 32) & 4294967295)::oid AND l.objid = (h.k & 4294967295)::oid
           LEFT JOIN pg_stat_activity a ON a.pid = l.pid""",
        source_ids, [lock_key(i) for i in source_ids],
    )
    return [(r["id"], r["pid"], r["application_name"]) for r in rows]


async def end_session(owner_conn: asyncpg.Connection, pid: int) -> None:
    """End a database session (a sync run Dagster gave up on, still holding its lock): its
    session-level lock goes with it. Needs superuser or pg_signal_backend."""
    await owner_conn.fetchval("SELECT pg_terminate_backend($1)", pid)
