"""References between tenant-owned rows cannot cross tenants (composite foreign keys)."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from storage.tenancy import principal_settings, tenant_tx


async def _collection(pool, tenant_id, name="c"):
    async with tenant_tx(pool, tenant_id) as conn:
        return await conn.fetchval(
            "INSERT INTO collections (tenant_id, name) VALUES ($1, $2) RETURNING id", tenant_id, name)


async def test_document_cannot_point_at_another_tenants_collection(pool, make_tenant):
    a, b = await make_tenant(), await make_tenant()
    b_collection = await _collection(pool, b.id)
    async with tenant_tx(pool, a.id) as conn:
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute("INSERT INTO documents (tenant_id, collection_id) VALUES ($1, $2)", a.id, b_collection)


async def test_message_cannot_point_at_another_tenants_conversation(pool, make_tenant):
    a, b = await make_tenant(), await make_tenant()
    same_principal = principal_settings(uuid.uuid4())  # only the tenant differs (owners: migration 0011)
    async with tenant_tx(pool, b.id, local_settings=same_principal) as conn:
        conv = await conn.fetchval("INSERT INTO conversations (tenant_id) VALUES ($1) RETURNING id", b.id)
    async with tenant_tx(pool, a.id, local_settings=same_principal) as conn:
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute(
                "INSERT INTO messages (tenant_id, conversation_id, role, content) VALUES ($1, $2, 'user', 'x')",
                a.id, conv)


async def test_same_tenant_references_still_work_and_cascade(pool, make_tenant):
    a = await make_tenant()
    collection = await _collection(pool, a.id)
    async with tenant_tx(pool, a.id) as conn:
        doc = await conn.fetchval(
            "INSERT INTO documents (tenant_id, collection_id) VALUES ($1, $2) RETURNING id", a.id, collection)
        await conn.execute(
            """INSERT INTO chunks (tenant_id, collection_id, document_id, ord, text, char_start, char_end,
                                   token_count, tsv) VALUES ($1, $2, $3, 0, 'x', 0, 1, 1, to_tsvector('x'))""",
            a.id, collection, doc)
        await conn.execute("DELETE FROM collections WHERE id = $1", collection)
        assert await conn.fetchval("SELECT count(*) FROM chunks WHERE document_id = $1", doc) == 0
