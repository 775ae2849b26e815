"""API keys: random, shown once, stored as sha256 with a short visible prefix.

A key looks like ``qk_<8 chars>_<43 chars>``; the first 11 characters (``qk_`` and the
8-character id) are the prefix kept in clear for listings and `quarry keys revoke PREFIX`.
Keys carry 256 bits of randomness, so a fast hash is enough: there is nothing to brute-force.
`is_well_formed` checks that exact shape (55 characters) with no I/O, so the API refuses any
other bearer before it touches Redis or Postgres.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
from uuid import UUID

import asyncpg

from core.errors import NotFound
from storage.models import ApiKey, Principal, Role
from storage.repositories._rows import to_struct, to_structs

__all__ = ["KEY_LENGTH", "create_key", "generate_key", "hash_key", "is_well_formed", "list_keys",
           "principal_for_key", "revoke_key", "revoke_key_by_prefix"]

_ALPHABET = string.ascii_letters + string.digits
_PREFIX_LEN = 11
_SECRET_BYTES = 32  # token_urlsafe(32): 43 characters of the URL-safe base64 alphabet
KEY_LENGTH = len("qk_") + 8 + 1 + 43
_SHAPE = re.compile(r"qk_[A-Za-z0-9]{8}_[A-Za-z0-9_-]{43}")
_COLUMNS = "id, tenant_id, user_id, name, prefix, role, created_at, expires_at, revoked_at"


def generate_key() -> tuple[str, str]:
    """(full key, prefix)."""
    ident = "".join(secrets.choice(_ALPHABET) for _ in range(8))
    key = f"qk_{ident}_{secrets.token_urlsafe(_SECRET_BYTES)}"
    return key, key[:_PREFIX_LEN]


def is_well_formed(key: str) -> bool:
    """Could `generate_key` have produced this string? (Length first: the regex never sees more.)"""
    return len(key) == KEY_LENGTH and _SHAPE.fullmatch(key) is not None


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


async def create_key(
    conn: asyncpg.Connection, tenant_id: UUID, role: Role, name: str = "",
    user_id: UUID | None = None,
) -> tuple[str, ApiKey]:
    """Returns the plaintext key (to show once) and its stored record."""
    for _ in range(5):  # prefix collisions are astronomically rare; retry anyway
        key, prefix = generate_key()
        try:
            row = await conn.fetchrow(
                f"""INSERT INTO api_keys (tenant_id, user_id, name, prefix, key_hash, role)
                    VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_COLUMNS}""",
                tenant_id, user_id, name, prefix, hash_key(key), role,
            )
        except asyncpg.UniqueViolationError:
            continue
        assert row is not None
        return key, to_struct(row, ApiKey)
    raise RuntimeError("could not allocate a unique key prefix")


async def list_keys(conn: asyncpg.Connection, include_revoked: bool = False) -> list[ApiKey]:
    where = "" if include_revoked else "WHERE revoked_at IS NULL"
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM api_keys {where} ORDER BY created_at, id")
    return to_structs(rows, ApiKey)


async def revoke_key(conn: asyncpg.Connection, key_id: UUID) -> ApiKey:
    """Revoke within the current tenant (RLS hides other tenants' keys: they are 404)."""
    row = await conn.fetchrow(
        f"""UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
            WHERE id = $1 RETURNING {_COLUMNS}""",
        key_id,
    )
    if row is None:
        raise NotFound("no such API key")
    return to_struct(row, ApiKey)


async def revoke_key_by_prefix(owner_conn: asyncpg.Connection, prefix: str) -> ApiKey:
    """Operator path (CLI, owner role): revoke whichever tenant's key has this prefix."""
    row = await owner_conn.fetchrow(
        f"""UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
            WHERE prefix = $1 RETURNING {_COLUMNS}""",
        prefix,
    )
    if row is None:
        raise NotFound(f"no API key with prefix {prefix!r}")
    return to_struct(row, ApiKey)


async def principal_for_key(conn: asyncpg.Connection, key: str) -> Principal | None:
    row = await conn.fetchrow("SELECT * FROM quarry_auth_principal($1)", hash_key(key))
    return to_struct(row, Principal) if row else None
