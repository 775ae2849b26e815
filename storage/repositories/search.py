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

__all__ = ["RRF_K", "SEARCH_SETTINGS", "SearchMode", "search_chunks"]

SearchMode = Literal["hybrid", "vector", "keyword"]
RRF_K = 60  # the usual RRF constant: dampens the weight of top ranks
SEARCH_SETTINGS = {"hnsw.iterative_scan": "relaxed_order", "hnsw.ef_search": "100"}

# Any query word may match (OR): natural-language questions rarely contain every word of the
# passage that answers them. Ranked in tiers: the query as a phrase (an exact identifier such as
# "KX-7734-B", which the parser splits into several lexemes), then all of its words, then cover
# density of any of them (which alone would rank a near-miss repeating one lexeme first).
_TSQUERY = f"nullif(replace(plainto_tsquery('{TSV_CONFIG}', $2)::text, '&', '|'), '')::tsquery"

_VECTOR_CTE = """
vec_candidates AS MATERIALIZED (
    SELECT e.chunk_id, (e.embedding::vector({dim})) <=> $1::vector({dim}) AS distance
    FROM embeddings e {doc_join}
    WHERE e.embedder = $3 AND ($4::uuid[] IS NULL OR e.collection_id = ANY($4)) {doc_filter}
    ORDER BY (e.embedding::vector({dim})) <=> $1::vector({dim})
    LIMIT $5
),
vec AS (SELECT chunk_id, row_number() OVER (ORDER BY distance, chunk_id) AS rank FROM vec_candidates)"""

_KEYWORD_CTE = """
kw_candidates AS MATERIALIZED (
    SELECT c.id AS chunk_id, c.tsv @@ q.phrase AS phrase, c.tsv @@ q.every AS every,
           ts_rank_cd(c.tsv, q.query) AS relevance
    FROM chunks c {doc_join_c},
         (SELECT {tsquery} AS query, phraseto_tsquery('{cfg}', $2) AS phrase,
                 plainto_tsquery('{cfg}', $2) AS every) q
    WHERE q.query IS NOT NULL AND c.tsv @@ q.query
      AND ($4::uuid[] IS NULL OR c.collection_id = ANY($4)) {doc_filter}
    ORDER BY phrase DESC, every DESC, relevance DESC, c.id
    LIMIT $5
),
kw AS (SELECT chunk_id, row_number() OVER (ORDER BY phrase DESC, every DESC, relevance DESC, chunk_id) AS rank
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


def _sql(mode: SearchMode, dim: int, with_metadata: bool) -> str:
    meta_e = "JOIN chunks ch ON ch.id = e.chunk_id JOIN documents md ON md.id = ch.document_id"
    meta_c = "JOIN documents md ON md.id = c.document_id"
    doc_filter = "AND md.metadata @> $8::jsonb" if with_metadata else ""
    parts = [
        _VECTOR_CTE.format(dim=int(dim), doc_join=meta_e if with_metadata else "", doc_filter=doc_filter)
        if mode != "keyword" else _EMPTY["vec"],
        _KEYWORD_CTE.format(tsquery=_TSQUERY, cfg=TSV_CONFIG, doc_join_c=meta_c if with_metadata else "",
                            doc_filter=doc_filter)
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
