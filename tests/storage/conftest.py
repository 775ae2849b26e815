"""Storage fixtures: a throwaway database on the session's server, and seeded tenants."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import pytest

from storage.migrate import ensure_database
from storage.repositories import api_keys, users
from storage.tenancy import principal_settings, tenant_tx
from storage.urls import with_database


@pytest.fixture
async def make_fresh_db(servers) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """Factory of brand-new empty databases (owner-role URLs), all dropped afterwards."""
    names: list[str] = []

    async def factory() -> str:
        name = f"quarry_fresh_{uuid.uuid4().hex[:12]}"
        assert await ensure_database(servers.postgres.url(), name)
        names.append(name)
        return with_database(servers.postgres.url(), name)

    yield factory
    conn = await asyncpg.connect(servers.postgres.url())
    try:
        for name in names:
            await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def fresh_db_url(make_fresh_db) -> str:
    return await make_fresh_db()


@dataclass
class Seeded:
    """One row of every tenant-owned table, all belonging to `tenant_id`."""

    tenant_id: uuid.UUID
    admin_key: str
    ids: dict[str, object] = field(default_factory=dict)
    principal: uuid.UUID = field(default_factory=uuid.uuid4)
    """The owner of the seeded conversation and message (conversations are per principal)."""

    @property
    def as_owner(self) -> dict[str, str]:
        return principal_settings(self.principal)


async def seed_tenant(pool: asyncpg.Pool, handle) -> Seeded:
    seeded = Seeded(handle.id, handle.admin_key)
    t = handle.id
    async with tenant_tx(pool, t) as conn:
        ids = seeded.ids
        ids["users"] = (await users.create_user(conn, t, "a@example.com", "A", "member")).id
        ids["api_keys"] = (await api_keys.create_key(conn, t, "reader", "seed"))[1].id
        ids["collections"] = await conn.fetchval(
            "INSERT INTO collections (tenant_id, name) VALUES ($1, 'docs') RETURNING id", t)
        ids["sources"] = await conn.fetchval(
            "INSERT INTO sources (tenant_id, collection_id, name, kind) VALUES ($1, $2, 'src', 'folder')"
            " RETURNING id", t, ids["collections"])
        ids["documents"] = await conn.fetchval(
            "INSERT INTO documents (tenant_id, collection_id, source_id, title) VALUES ($1, $2, $3, 'doc')"
            " RETURNING id", t, ids["collections"], ids["sources"])
        text = f"secret text of tenant {t}"
        ids["chunks"] = await conn.fetchval(
            """INSERT INTO chunks (tenant_id, collection_id, document_id, ord, text, char_start,
                                   char_end, token_count, tsv)
               VALUES ($1, $2, $3, 0, $4, 0, length($4), 5, to_tsvector('english', $4)) RETURNING id""",
            t, ids["collections"], ids["documents"], text)
        await conn.execute(
            "INSERT INTO embeddings (chunk_id, tenant_id, collection_id, embedder, dim, embedding)"
            " VALUES ($1, $2, $3, 'test', 3, $4)",
            ids["chunks"], t, ids["collections"], [0.1, 0.2, 0.3])
        ids["embeddings"] = ids["chunks"]
        ids["sync_runs"] = await conn.fetchval(
            "INSERT INTO sync_runs (tenant_id, source_id) VALUES ($1, $2) RETURNING id", t, ids["sources"])
        await conn.execute("SELECT set_config('app.principal_id', $1, true)", str(seeded.principal))
        ids["conversations"] = await conn.fetchval(
            "INSERT INTO conversations (tenant_id, title) VALUES ($1, 'c') RETURNING id", t)
        ids["messages"] = await conn.fetchval(
            "INSERT INTO messages (tenant_id, conversation_id, role, content) VALUES ($1, $2, 'user', 'hi')"
            " RETURNING id", t, ids["conversations"])
    return seeded


@pytest.fixture
async def two_tenants(pool, make_tenant) -> tuple[Seeded, Seeded]:
    return await seed_tenant(pool, await make_tenant()), await seed_tenant(pool, await make_tenant())
