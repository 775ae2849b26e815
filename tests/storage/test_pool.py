"""The serving pool: sizing from the connection budget, acquire timeout → 503, statement
timeout, one retry for reads on a dropped connection, PgBouncer mode."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from api.app import app_database_url, create_app
from api.serving import api_pool_size, backpressure
from core.errors import Unavailable
from core.settings import load_settings
from storage.db import create_pool
from storage.pooling import run_read, run_tenant_read
from tests.api.helpers import assert_problem
from tests.serving_helpers import concurrent_client


@pytest.fixture
def app_client():
    return lambda settings: AsyncTestClient(app=create_app(settings))


def test_pool_size_splits_the_connection_budget():
    s = load_settings(environ={}, dotenv=None, db_max_connections=80, api_workers=4, arq_workers=2, db_pool_max=50)
    # Each worker also holds two LISTEN connections (collection versions, document progress) and
    # an operator pool of 2 (owner role) outside its pool.
    assert api_pool_size(s) == (80 - 2 * 4) // 4 - 2 - 2 == 14
    assert api_pool_size(msgspec.structs.replace(s, db_pgbouncer=True)) == 16  # no LISTEN through PgBouncer
    s = msgspec.structs.replace(s, db_pool_max=10)
    assert api_pool_size(s) == 10  # the per-process cap
    s = load_settings(environ={}, dotenv=None, db_max_connections=3, api_workers=8, arq_workers=1)
    assert api_pool_size(s) == 1  # never zero
    assert backpressure(msgspec.structs.replace(s, api_backpressure=7)) == 7
    assert backpressure(load_settings(environ={}, dotenv=None, db_pool_max=20, api_workers=2)) == 1024
    assert backpressure(load_settings(environ={}, dotenv=None, db_pool_max=400, db_max_connections=900,
                                      api_workers=2)) == 1600


@pytest.fixture
async def tiny_pool(settings):
    pool = await create_pool(app_database_url(settings), min_size=0, max_size=2, acquire_timeout_s=0.3,
                             statement_timeout_ms=200)
    yield pool
    await pool.close()


async def test_exhausted_pool_raises_unavailable_within_the_timeout(tiny_pool):
    held = [await tiny_pool.acquire() for _ in range(2)]
    try:
        assert tiny_pool.in_use == 2
        started = time.monotonic()
        with pytest.raises(Unavailable) as caught:
            async with tiny_pool.acquire():
                pass
        assert 0.25 <= time.monotonic() - started < 1.0
        assert caught.value.headers["Retry-After"] == "1"
        assert tiny_pool.waiting == 0
    finally:
        for conn in held:
            await tiny_pool.release(conn)
    assert tiny_pool.in_use == 0
    async with tiny_pool.acquire() as conn:
        assert await conn.fetchval("SELECT 1") == 1


async def test_statement_timeout_cancels_long_queries(tiny_pool):
    async with tiny_pool.acquire() as conn:
        with pytest.raises(asyncpg.QueryCanceledError):
            await conn.execute("SELECT pg_sleep(2)")


async def _kill_own_backend_once(owner_pool, calls: list[int]):
    async def read(conn):
        calls.append(conn.get_server_pid())
        if len(calls) == 1:
            async with owner_pool.acquire() as owner:
                await owner.execute("SELECT pg_terminate_backend($1)", calls[0])
            await asyncio.sleep(0.05)
        return await conn.fetchval("SELECT 42")

    return read


async def test_reads_are_retried_once_on_a_dropped_connection(tiny_pool, owner_pool, make_tenant):
    calls: list[int] = []
    assert await run_read(tiny_pool, await _kill_own_backend_once(owner_pool, calls)) == 42
    assert len(calls) == 2 and calls[0] != calls[1]  # the retry ran on a fresh connection

    tenant = await make_tenant()
    calls = []
    assert await run_tenant_read(tiny_pool, tenant.id, await _kill_own_backend_once(owner_pool, calls)) == 42
    assert len(calls) == 2


async def test_a_second_drop_is_unavailable_not_a_crash(tiny_pool, owner_pool):
    async def always_dropped(conn):
        async with owner_pool.acquire() as owner:
            await owner.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
        await asyncio.sleep(0.05)
        return await conn.fetchval("SELECT 1")

    with pytest.raises(Unavailable):
        await run_read(tiny_pool, always_dropped)


async def test_api_answers_503_when_the_pool_is_exhausted(settings, make_tenant):
    tenant = await make_tenant()
    small = msgspec.structs.replace(settings, db_pool_max=2, db_acquire_timeout_s=0.5)
    async with concurrent_client(small) as (client, app):
        assert (await client.get("/v1/collections", headers=tenant.headers)).status_code == 200
        pool = app.state.pool
        held = [await pool.acquire() for _ in range(pool.get_max_size())]
        try:
            started = time.monotonic()
            r = await client.get("/v1/collections", headers=tenant.headers)
            elapsed = time.monotonic() - started
            body = assert_problem(r, 503)
            assert "busy" in body["detail"]
            assert r.headers["retry-after"] == "1"
            assert 0.4 <= elapsed < 2.0, elapsed  # the acquire timeout, not an endless hang
            other = await make_tenant()  # not cached yet: authentication itself needs a connection
            assert_problem(await client.get("/v1/me", headers=other.headers), 503)
        finally:
            for conn in held:
                await pool.release(conn)
        assert (await client.get("/v1/collections", headers=tenant.headers)).status_code == 200


async def test_statement_timeout_is_a_503_problem(settings, app_client, make_tenant, monkeypatch):
    from api.collections import controllers

    async def slow(conn, *args, **kwargs):
        await conn.execute("SELECT pg_sleep(1)")

    monkeypatch.setattr(controllers.collections, "list_collections", slow)
    tenant = await make_tenant()
    async with app_client(msgspec.structs.replace(settings, db_statement_timeout_ms=100)) as client:
        r = await client.get("/v1/collections", headers=tenant.headers)
    body = assert_problem(r, 503)
    assert "statement timeout" in body["detail"] and r.headers["retry-after"] == "2"


async def test_pgbouncer_mode_disables_the_statement_cache(settings, app_client, make_tenant):
    pool = await create_pool(app_database_url(settings), min_size=1, max_size=1, pgbouncer=True, acquire_timeout_s=1)
    try:
        async with pool.acquire() as conn:
            for _ in range(3):
                await conn.fetchval("SELECT $1::int", 1)
            assert len(conn._con._stmt_cache) == 0  # nothing prepared survives a statement
    finally:
        await pool.close()
    tenant = await make_tenant()
    async with app_client(msgspec.structs.replace(settings, db_pgbouncer=True)) as client:
        assert (await client.get("/v1/collections", headers=tenant.headers)).status_code == 200
        assert (await client.post("/v1/search", json={"query": "anything", "mode": "keyword"},
                                  headers=tenant.headers)).status_code == 200


async def test_released_connections_carry_no_transaction_or_tenant(settings):
    # Release skips asyncpg's reset query (storage.db._keep_session); what must still hold: a
    # transaction left open is rolled back and a tenant setting does not reach the next user.
    pool = await create_pool(app_database_url(settings), min_size=1, max_size=1)
    try:
        conn = await pool.acquire()
        await conn.execute("BEGIN")
        await conn.execute("SELECT set_config('app.tenant_id', $1, true)", "00000000-0000-0000-0000-000000000001")
        await pool.release(conn)  # released inside the transaction
        async with pool.acquire() as again:
            assert again.is_in_transaction() is False
            assert await again.fetchval("SELECT current_setting('app.tenant_id', true)") in (None, "")
            assert await again.fetchval("SHOW statement_timeout") != "0"  # the pool's own setting stays
    finally:
        await pool.close()
