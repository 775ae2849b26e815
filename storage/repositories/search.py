"""Hybrid retrieval in one statement: HNSW vector top-n + full-text top-n, fused by
reciprocal-rank fusion (RRF), then the page of hits with highlights.

The vector side uses pgvector's iterative index scan (set per transaction by the caller via
`SEARCH_SETTINGS`) so the tenant/collection filter, applied after the index scan, does not
starve results. `relaxed_order` may return candidates slightly out of order, so they are
materialised and re-sorted by distance before ranking, as pgvector's docs advise.
"""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

import asyncpg
import numpy as np
import numpy.typing as npt

from storage.models import SearchHit
from storage.repositories._rows import to_structs
from storage.repositories.chunks import TSV_CONFIG

__all__ = ["EXACT_VECTOR_MAX_ROWS", "RRF_K", "SEARCH_SETTINGS", "SearchMode", "search_chunks"]

SearchMode = Literal["hybrid", "vector", "keyword"]
RRF_K = 60  # the usual RRF constant: dampens the weight of top ranks
# No parallel workers: a search is a short latency-bound statement among hundreds of concurrent
# ones, and launching workers cost ~5 ms even for the exact-scan branch that a one-time filter
# then skips (the filter sits below the Gather).
SEARCH_SETTINGS = {"hnsw.iterative_scan": "relaxed_order", "hnsw.ef_search": "100",
                   "max_parallel_workers_per_gather": "0"}

# The query words shape the keyword candidates in tiers, evaluated in order until `candidates`
# rows are found (Postgres's Append under a LIMIT never starts a tier it does not need):
#   0. every word (AND), the query as a phrase first: an exact identifier such as "KX-7734-B",
#      which the parser splits into several lexemes, or a pasted sentence;
#   1. all words but one (queries of up to 10 distinct lexemes), 2. all but two (up to 6)
#      (`quarry_tsquery_all_but`, migration 0008): questions rarely contain every word of the
#      passage that answers them, and the OR of many subsets gets expensive for long queries;
#   3. any word (OR), ranking at most ANY_WORD_SCAN of its matches (in storage order): an OR of a
#      question's words matches a large share of any corpus (44 % of a 50k-chunk corpus for a
#      typical question) and ranking every match cost ~100 ms per search, while a chunk sharing
#      one word with the query is a weak candidate that vector search judges better.
# Within a tier, cover density over any of the words ranks. Each tier leaves out the rows of the
# tiers before it. Every tier is a GIN index scan under RLS (ts_match_vq is LEAKPROOF, 0008).
_TSQUERY = f"nullif(replace(plainto_tsquery('{TSV_CONFIG}', $2)::text, '&', '|'), '')::tsquery"

_KEYWORD_TIER = """
    (SELECT * FROM (
        SELECT c.id AS chunk_id, {tier} AS tier, c.tsv @@ q.phrase AS phrase,
               ts_rank_cd(c.tsv, q.query) AS relevance
        FROM chunks c {doc_join_c}, kw_query q
        WHERE c.tsv @@ q.{match} {exclude}
          AND ($4::uuid[] IS NULL OR c.collection_id = ANY($4)) {doc_filter}
        {scan_limit}) t
     ORDER BY phrase DESC, relevance DESC, chunk_id
     LIMIT $5)"""

ANY_WORD_SCAN = 300  # rows of the any-word tier that are ranked at most (see above)
_KEYWORD_TIERS = (  # (tsquery column of kw_query, the earlier tiers' columns to leave out, scan cap)
    ("every", (), ""),
    ("but_one", ("every",), ""),
    ("but_two", ("every", "but_one"), ""),
    ("query", ("every", "but_one", "but_two"), f"LIMIT {ANY_WORD_SCAN}"),
)

# Below EXACT_VECTOR_MAX_ROWS embeddings in scope (a small collection, a small tenant), an exact
# scan of the scope is faster than HNSW and has perfect recall: the graph is shared by every
# tenant and collection, so a selective filter makes the iterative scan walk far (50k chunks,
# a 1,626-chunk collection: HNSW 39 ms p50, exact 3.8 ms). The scope is counted up to the bound
# first; a one-time filter then runs only one of the two branches.
EXACT_VECTOR_MAX_ROWS = 5000

_VECTOR_CTE = """
vec_scope AS MATERIALIZED (
    SELECT count(*) < {exact_max} AS small FROM (
        SELECT 1 FROM embeddings e {doc_join}
        WHERE e.embedder = $3 AND ($4::uuid[] IS NULL OR e.collection_id = ANY($4)) {doc_filter}
        LIMIT {exact_max}) scope
),
vec_candidates AS MATERIALIZED (
    (SELECT e.chunk_id, (e.embedding::vector({dim})) <=> $1::vector({dim}) AS distance
     FROM embeddings e {doc_join}
     WHERE NOT (SELECT small FROM vec_scope)
       AND e.embedder = $3 AND ($4::uuid[] IS NULL OR e.collection_id = ANY($4)) {doc_filter}
     ORDER BY (e.embedding::vector({dim})) <=> $1::vector({dim})
     LIMIT $5)
    UNION ALL
    (SELECT e.chunk_id, (e.embedding::vector({dim})) <=> $1::vector({dim}) AS distance
     FROM embeddings e {doc_join}
     WHERE (SELECT small FROM vec_scope)
       AND e.embedder = $3 AND ($4::uuid[] IS NULL OR e.collection_id = ANY($4)) {doc_filter}
     ORDER BY ((e.embedding::vector({dim})) <=> $1::vector({dim})) + 0  -- not the HNSW operator: exact
     LIMIT $5)
),
vec AS (SELECT chunk_id, row_number() OVER (ORDER BY distance, chunk_id) AS rank FROM vec_candidates)"""

_KEYWORD_CTE = """
kw_query AS MATERIALIZED (
    SELECT {tsquery} AS query, phraseto_tsquery('{cfg}', $2) AS phrase,
           nullif(plainto_tsquery('{cfg}', $2)::text, '')::tsquery AS every,
           quarry_tsquery_all_but('{cfg}', $2, 1, 10) AS but_one,
           quarry_tsquery_all_but('{cfg}', $2, 2, 6) AS but_two
),
kw_candidates AS MATERIALIZED (
    SELECT * FROM ({tiers}) tiers
    LIMIT $5
),
kw AS (SELECT chunk_id, row_number() OVER (ORDER BY tier, phrase DESC, relevance DESC, chunk_id) AS rank
       FROM kw_candidates)"""

# A disabled side still mentions its parameters: Postgres must infer every parameter's type.
_EMPTY = {
    "vec": "vec AS (SELECT NULL::bigint AS chunk_id, NULL::bigint AS rank "
           "WHERE false AND $1::vector IS NULL AND $3::text IS NULL)",
    "kw": "kw AS (SELECT NULL::bigint AS chunk_id, NULL::bigint AS rank WHERE false)",
}

_FINAL = """
fused AS (
    SELECT coalesce(vec.chunk_id, kw.chunk_id) AS chunk_id,
           coalesce(1.0 / ({rrf} + vec.rank), 0) + coalesce(1.0 / ({rrf} + kw.rank), 0) AS score,
           vec.rank AS vector_rank, kw.rank AS keyword_rank
    FROM vec FULL OUTER JOIN kw ON vec.chunk_id = kw.chunk_id
),
page AS (SELECT * FROM fused ORDER BY score DESC, chunk_id LIMIT $6 OFFSET $7)
SELECT c.id AS chunk_id, c.document_id, c.collection_id, d.title, d.uri, c.ord, c.text, c.heading,
       c.page, c.char_start, c.char_end, p.score::float8 AS score, p.vector_rank, p.keyword_rank,
       d.metadata,
       CASE WHEN {tsquery} IS NULL THEN NULL ELSE
            ts_headline('{cfg}', c.text, {tsquery},
                        'MaxFragments=2, MaxWords=24, MinWords=8, StartSel=<mark>, StopSel=</mark>')
       END AS highlight
FROM page p JOIN chunks c ON c.id = p.chunk_id JOIN documents d ON d.id = c.document_id
ORDER BY p.score DESC, p.chunk_id"""


def _keyword_cte(doc_join_c: str, doc_filter: str) -> str:
    tiers = "\n    UNION ALL".join(
        _KEYWORD_TIER.format(
            tier=n, match=match, doc_join_c=doc_join_c, doc_filter=doc_filter, scan_limit=scan_limit,
            exclude="".join(f" AND NOT coalesce(c.tsv @@ q.{earlier}, false)" for earlier in before))
        for n, (match, before, scan_limit) in enumerate(_KEYWORD_TIERS))
    return _KEYWORD_CTE.format(tsquery=_TSQUERY, cfg=TSV_CONFIG, tiers=tiers)


def _sql(mode: SearchMode, dim: int, with_metadata: bool) -> str:
    meta_e = "JOIN chunks ch ON ch.id = e.chunk_id JOIN documents md ON md.id = ch.document_id"
    meta_c = "JOIN documents md ON md.id = c.document_id"
    doc_filter = "AND md.metadata @> $8::jsonb" if with_metadata else ""
    parts = [
        _VECTOR_CTE.format(dim=int(dim), exact_max=EXACT_VECTOR_MAX_ROWS, doc_join=meta_e if with_metadata else "",
                           doc_filter=doc_filter)
        if mode != "keyword" else _EMPTY["vec"],
        _keyword_cte(meta_c if with_metadata else "", doc_filter)
        if mode != "vector" else _EMPTY["kw"],
        _FINAL.format(rrf=RRF_K, tsquery=_TSQUERY, cfg=TSV_CONFIG),
    ]
    return "WITH " + ",\n".join(parts)


async def search_chunks(
    conn: asyncpg.Connection, *, query_text: str, query_vector: npt.NDArray[np.float32] | None,
    embedder: str, dim: int, mode: SearchMode, collection_ids: list[UUID] | None,
    metadata: dict[str, Any] | None, k: int, offset: int, candidates: int,
) -> list[SearchHit]:
    """Hits of the current tenant (RLS), best first, with highlights of the query words."""
    if mode != "keyword" and query_vector is None:
        raise ValueError("vector and hybrid search need a query vector")
    args: list[Any] = [
        query_vector if query_vector is not None else np.zeros(dim, dtype=np.float32),
        query_text, embedder, collection_ids, candidates, k, offset,
    ]
    if metadata:
        args.append(metadata)
    rows = await conn.fetch(_sql(mode, dim, bool(metadata)), *args)
    return to_structs(rows, SearchHit)
