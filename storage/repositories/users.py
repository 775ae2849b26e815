"""Users of a tenant (run inside `tenant_tx`)."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from core.errors import Conflict
from storage.models import Role, User
from storage.repositories._rows import to_struct, to_structs

__all__ = ["create_user", "get_user", "list_users"]


async def create_user(
    conn: asyncpg.Connection, tenant_id: UUID, email: str, name: str, role: Role
) -> User:
    try:
        row = await conn.fetchrow(
            "INSERT INTO users (tenant_id, email, name, role) VALUES ($1, $2, $3, $4) RETURNING *",
            tenant_id, email, name, role,
        )
    except asyncpg.UniqueViolationError:
        raise Conflict(f"a user with email {email!r} already exists in this tenant") from None
    assert row is not None
    return to_struct(row, User)


async def get_user(conn: asyncpg.Connection, user_id: UUID) -> User | None:
    row = await conn.fetchrow("SELECT * FROM users WHERE id = $1", user_id)
    return to_struct(row, User) if row else None


async def list_users(
    conn: asyncpg.Connection, after: tuple[object, UUID] | None, limit: int
) -> list[User]:
    """Keyset pagination on (created_at, id)."""
    if after is None:
        rows = await conn.fetch("SELECT * FROM users ORDER BY created_at, id LIMIT $1", limit)
    else:
        rows = await conn.fetch(
            "SELECT * FROM users WHERE (created_at, id) > ($1, $2) ORDER BY created_at, id LIMIT $3",
            after[0], after[1], limit,
        )
    return to_structs(rows, User)
