"""Searches run under a transaction-local statement timeout; a cancelled one is a 503 problem."""

from __future__ import annotations

import msgspec

from tests.api.helpers import assert_problem


async def test_a_search_over_its_statement_timeout_is_503_with_retry_after(
    app_client, settings, make_tenant, owner_pool, pool,
):
    quick = msgspec.structs.replace(settings, search_statement_timeout_ms=200, search_cache_ttl_s=0)
    async with app_client(quick) as client:
        t = await make_tenant()
        search = {"query": "otters", "mode": "keyword"}
        assert (await client.post("/v1/search", json=search, headers=t.headers)).status_code == 200
        # The search cannot finish while the chunks table is locked: only its timeout ends it
        # (the app's own statement timeout, 30 s, would answer far later, and with another detail).
        async with owner_pool.acquire() as conn, conn.transaction():
            await conn.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")
            r = await client.post("/v1/search", json=search, headers=t.headers)
        problem = assert_problem(r, 503)
        assert r.headers["retry-after"] == "1"
        assert "200 ms" in problem["detail"]
        assert (await client.post("/v1/search", json=search, headers=t.headers)).status_code == 200
    # The timeout was local to the search's transaction: pooled connections keep their default.
    async with pool.acquire() as conn:
        assert await conn.fetchval("SHOW statement_timeout") != "200ms"
