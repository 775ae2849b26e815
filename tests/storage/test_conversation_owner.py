"""Conversations belong to their creator, enforced by row-level security (migration 0011):
with the right tenant but another principal, the app role can neither read nor change a
conversation or its messages, nor add a message to it."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from api.app import app_database_url
from core.errors import NotFound
from storage.db import create_pool
from storage.repositories import conversations as conv_repo
from storage.tenancy import principal_settings, tenant_tx


@pytest.fixture
async def owned(pool, make_tenant):
    """A tenant, two principals of it, and a conversation (with one message) of the first."""
    tenant = await make_tenant()
    alice, bob = uuid.uuid4(), uuid.uuid4()
    async with tenant_tx(pool, tenant.id, local_settings=principal_settings(alice)) as conn:
        conv = await conv_repo.create_conversation(conn, tenant.id, "alice's", None)
        message = await conv_repo.add_message(conn, tenant_id=tenant.id, conversation_id=conv.id, role="user",
                                              content="my private question")
    return tenant.id, alice, bob, conv.id, message.id


async def test_the_owner_reads_and_writes_its_conversation(pool, owned):
    tenant, alice, _, conv, message = owned
    async with tenant_tx(pool, tenant, local_settings=principal_settings(alice)) as conn:
        assert (await conv_repo.get_conversation(conn, conv)).title == "alice's"
        assert [c.id for c in await conv_repo.list_conversations(conn, None, 10)] == [conv]
        messages, _ = await conv_repo.list_messages(conn, conv, 10)
        assert [m.id for m in messages] == [message]
        await conv_repo.add_message(conn, tenant_id=tenant, conversation_id=conv, role="assistant", content="ok")
        assert await conn.fetchval("SELECT count(*) FROM messages WHERE conversation_id = $1", conv) == 2


async def test_another_principal_of_the_tenant_sees_and_changes_nothing(pool, owner_pool, owned):
    tenant, alice, bob, conv, message = owned
    async with tenant_tx(pool, tenant, local_settings=principal_settings(bob)) as conn:
        with pytest.raises(NotFound):
            await conv_repo.get_conversation(conn, conv)
        assert await conv_repo.list_conversations(conn, None, 10) == []
        assert await conv_repo.list_messages(conn, conv, 10) == ([], False)
        assert await conv_repo.recent_messages(conn, conv, 10) == []
        assert await conn.fetchval("SELECT count(*) FROM messages") == 0
        assert await conn.execute("UPDATE conversations SET title = 'mine now' WHERE id = $1", conv) == "UPDATE 0"
        assert await conn.execute("UPDATE conversations SET owner_id = $2 WHERE id = $1", conv, bob) == "UPDATE 0"
        assert await conn.execute("UPDATE messages SET content = 'x' WHERE id = $1", message) == "UPDATE 0"
        assert await conn.execute("DELETE FROM messages WHERE id = $1", message) == "DELETE 0"
        with pytest.raises(NotFound):
            await conv_repo.delete_conversation(conn, conv)
    async with owner_pool.acquire() as conn:  # everything is still there, unchanged
        row = await conn.fetchrow("SELECT title, owner_id FROM conversations WHERE id = $1", conv)
        assert (row["title"], row["owner_id"]) == ("alice's", alice)
        assert await conn.fetchval("SELECT content FROM messages WHERE id = $1", message) == "my private question"


async def test_another_principal_cannot_write_into_the_conversation(pool, owned):
    tenant, alice, bob, conv, _ = owned
    # Foreign keys ignore row-level security: the composite key (tenant, owner, conversation) refuses it.
    async with tenant_tx(pool, tenant, local_settings=principal_settings(bob)) as conn:
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conv_repo.add_message(conn, tenant_id=tenant, conversation_id=conv, role="user", content="hi")
    # Claiming to be the owner is refused by the policy's check.
    for sql in ("INSERT INTO messages (tenant_id, conversation_id, role, content, owner_id)"
                " VALUES ($1, $2, 'user', 'hi', $3)",
                "INSERT INTO conversations (tenant_id, title, owner_id) VALUES ($1, $2::text, $3)"):
        async with tenant_tx(pool, tenant, local_settings=principal_settings(bob)) as conn:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql, tenant, str(conv), alice)


async def test_without_a_principal_nothing_is_visible_or_writable(pool, owned):
    tenant = owned[0]
    async with tenant_tx(pool, tenant) as conn:
        assert await conn.fetchval("SELECT count(*) FROM conversations") == 0
        assert await conn.fetchval("SELECT count(*) FROM messages") == 0
    async with tenant_tx(pool, tenant) as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conv_repo.create_conversation(conn, tenant, "nobody's", None)


async def test_conversations_without_an_owner_are_hidden_from_everyone(pool, owner_pool, owned):
    """Conversations from before migration 0011 have no owner: no principal can see them."""
    tenant, alice, bob, _, _ = owned
    async with owner_pool.acquire() as conn:
        legacy = await conn.fetchval(
            "INSERT INTO conversations (tenant_id, title, owner_id) VALUES ($1, 'legacy', NULL) RETURNING id", tenant)
        await conn.execute("INSERT INTO messages (tenant_id, conversation_id, role, content, owner_id)"
                           " VALUES ($1, $2, 'user', 'old', NULL)", tenant, legacy)
    for who in (alice, bob):
        async with tenant_tx(pool, tenant, readonly=True, local_settings=principal_settings(who)) as conn:
            assert await conn.fetchval("SELECT count(*) FROM conversations WHERE id = $1", legacy) == 0
            assert await conn.fetchval("SELECT count(*) FROM messages WHERE conversation_id = $1", legacy) == 0

    # docs/chat.md: an operator hands them to an owner (the owner role, as here).
    async with owner_pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE conversations SET owner_id = $2 WHERE tenant_id = $1 AND owner_id IS NULL",
                           tenant, alice)
        await conn.execute("""UPDATE messages m SET owner_id = c.owner_id FROM conversations c
                              WHERE m.conversation_id = c.id AND m.tenant_id = $1 AND m.owner_id IS NULL""", tenant)
    async with tenant_tx(pool, tenant, readonly=True, local_settings=principal_settings(alice)) as conn:
        messages, _ = await conv_repo.list_messages(conn, legacy, 10)
        assert [m.content for m in messages] == ["old"]
    async with tenant_tx(pool, tenant, readonly=True, local_settings=principal_settings(bob)) as conn:
        assert await conn.fetchval("SELECT count(*) FROM conversations WHERE id = $1", legacy) == 0


async def test_reassigning_a_conversation_moves_its_messages(pool, owner_pool, owned):
    """The operator's path (docs/chat.md): the owner role hands a conversation to another principal."""
    tenant, _, bob, conv, message = owned
    async with owner_pool.acquire() as conn:
        await conn.execute("UPDATE conversations SET owner_id = $2 WHERE id = $1", conv, bob)
        assert await conn.fetchval("SELECT owner_id FROM messages WHERE id = $1", message) == bob
    async with tenant_tx(pool, tenant, readonly=True, local_settings=principal_settings(bob)) as conn:
        messages, _ = await conv_repo.list_messages(conn, conv, 10)
        assert [m.id for m in messages] == [message]


async def test_the_principal_setting_does_not_outlive_its_transaction(settings, owned):
    tenant, alice, _, _, _ = owned
    single = await create_pool(app_database_url(settings), min_size=1, max_size=1)
    try:
        async with tenant_tx(single, tenant, local_settings=principal_settings(alice)) as conn:
            backend = await conn.fetchval("SELECT pg_backend_pid()")
            assert await conn.fetchval("SELECT count(*) FROM conversations") == 1
        async with tenant_tx(single, tenant) as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == backend  # the same connection
            assert await conn.fetchval("SELECT current_setting('app.principal_id', true)") in (None, "")
            assert await conn.fetchval("SELECT count(*) FROM conversations") == 0
    finally:
        await single.close()
