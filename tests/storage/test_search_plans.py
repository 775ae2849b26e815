"""The plans search relies on, checked as the application role (row-level security applies).

Both guard migration 0008: without it, a full-text condition cannot use its GIN index under
RLS (every keyword search reads the whole tenant), and a tenant-wide scope count has no index.
"""

from __future__ import annotations

import json

import numpy as np

from storage.tenancy import tenant_tx


async def _plan(pool, tenant_id, sql: str, *args) -> str:
    # With sequential scans priced out, an index that the planner may use is always chosen.
    async with tenant_tx(pool, tenant_id, readonly=True, local_settings={"enable_seqscan": "off"}) as conn:
        return json.dumps(await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args))


async def test_full_text_match_may_use_an_index_under_rls(pool, make_tenant):
    # Postgres lets a condition run before the RLS policy (as an index condition) only when its
    # function is LEAKPROOF; the plan itself depends on the tenant's size, the property does not.
    tenant = await make_tenant()
    async with tenant_tx(pool, tenant.id, readonly=True) as conn:
        leakproof = await conn.fetchval(
            """SELECT p.proleakproof FROM pg_operator o JOIN pg_proc p ON p.oid = o.oprcode
               WHERE o.oprname = '@@' AND o.oprleft = 'tsvector'::regtype AND o.oprright = 'tsquery'::regtype""")
    assert leakproof is True


async def test_all_but_tiers_build_the_expected_queries(pool, make_tenant):
    tenant = await make_tenant()
    async with tenant_tx(pool, tenant.id, readonly=True) as conn:
        async def tier(text: str, dropped: int, max_lexemes: int = 10) -> str | None:
            value = await conn.fetchval("SELECT quarry_tsquery_all_but('english', $1, $2, $3)::text",
                                        text, dropped, max_lexemes)
            return None if value is None else value.replace("'", "")

        def terms(query: str | None) -> set[frozenset[str]]:
            assert query is not None
            return {frozenset(term.split(" & ")) for term in query.split(" | ")}

        assert terms(await tier("pump seal kit", 1)) == terms("pump & seal | kit & seal | kit & pump")
        assert await tier("pump seal kit", 2) is None  # one word left: not a tier of its own
        assert terms(await tier("hydraulic pump seal kit", 2)) == terms(
            "pump & seal | hydraul & seal | hydraul & pump | kit & seal | kit & pump | hydraul & kit")
        assert await tier("hydraulic pump seal kit", 1, max_lexemes=3) is None  # too long a query
        assert await tier("the of and", 1) is None  # only stop words


async def test_tenant_wide_vector_scope_is_counted_by_index(pool, make_tenant):
    tenant = await make_tenant()
    plan = await _plan(pool, tenant.id, "SELECT count(*) FROM embeddings WHERE embedder = $1", "minilm-l6-v2")
    assert "embeddings_tenant_embedder" in plan, plan


async def _hnsw_loops(pool, tenant_id) -> int:
    """How many times the vector statement ran an HNSW index scan (EXPLAIN ANALYZE)."""
    from storage.repositories.search import SEARCH_SETTINGS, _sql

    # A test database is small enough for a scan and a sort to look cheaper than HNSW.
    settings = {**SEARCH_SETTINGS, "enable_seqscan": "off", "enable_sort": "off"}
    async with tenant_tx(pool, tenant_id, readonly=True, local_settings=settings) as conn:
        plan = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + _sql("vector", 384, False),
                                   np.ones(384, dtype=np.float32), "pump", "minilm-l6-v2", None, 50, 10, 0)
    nodes, stack = [], [(json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.get("Plans", []))
    hnsw = [n for n in nodes if n.get("Index Name") == "embeddings_hnsw_minilm_l6_v2"]
    assert hnsw, "the statement has no HNSW branch"
    return sum(n["Actual Loops"] for n in hnsw)


async def test_small_scopes_scan_exactly_and_large_ones_use_hnsw(pool, make_tenant, monkeypatch):
    from storage.repositories import search

    tenant = await make_tenant()  # no embeddings: far below the bound
    assert await _hnsw_loops(pool, tenant.id) == 0

    monkeypatch.setattr(search, "EXACT_VECTOR_MAX_ROWS", 0)  # every scope is "large"
    assert await _hnsw_loops(pool, tenant.id) == 1
