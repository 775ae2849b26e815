"""Which embedder answers a search: each collection's active one.

A backfill (pipelines/backfill) re-embeds a collection with another embedder, possibly of
another dimension, and switches `collections.active_embedder` atomically. From then on the
query must be embedded by that embedder and matched against its rows. A search's scope (the
requested collections, or all of the tenant's) is grouped by active embedder: one group - the
usual case - is one statement as before; several groups run one statement each, and their hits
merge by fused score (reciprocal-rank scores have the same scale in every group).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from pipelines.embedding import EmbedderResolver
from rag.embedders import Embedder
from storage.models import SearchHit
from storage.pooling import run_tenant_read
from storage.repositories.search import SEARCH_SETTINGS, SearchMode, search_chunks

__all__ = ["EmbedderGroup", "embedder_groups", "search_scope"]

QueryVector = Callable[[Embedder], Awaitable[Any]]


@dataclass(frozen=True)
class EmbedderGroup:
    embedder: Embedder
    collection_ids: list[UUID] | None  # None: every collection of the tenant


async def embedder_groups(
    read_pool: Any, tenant_id: UUID, collection_ids: list[UUID] | None, resolver: EmbedderResolver,
) -> list[EmbedderGroup]:
    async def load(conn: Any) -> list[EmbedderGroup]:
        rows = await conn.fetch(
            """SELECT active_embedder, array_agg(id ORDER BY id) AS ids FROM collections
               WHERE $1::uuid[] IS NULL OR id = ANY($1) GROUP BY active_embedder ORDER BY active_embedder""",
            collection_ids,
        )
        if not rows:  # no collection in scope: nothing to find, the default embedder will say so
            return [EmbedderGroup(resolver.default, collection_ids)]
        if len(rows) == 1:  # keep the caller's scope (None stays tenant-wide)
            return [EmbedderGroup(await resolver.get(conn, rows[0]["active_embedder"]), collection_ids)]
        return [EmbedderGroup(await resolver.get(conn, r["active_embedder"]), list(r["ids"])) for r in rows]

    return await run_tenant_read(read_pool, tenant_id, load)


async def search_scope(
    read_pool: Any, tenant_id: UUID, groups: list[EmbedderGroup], query_vector: QueryVector, *,
    query: str, mode: SearchMode, metadata: dict[str, Any] | None, k: int, offset: int, candidates: int,
    statement_timeout_ms: int,
) -> list[SearchHit]:
    """Hits `offset`..`offset + k` of the scope, best first. Each statement is cancelled after
    `statement_timeout_ms` (transaction-local, set with the tenant: no extra round trip)."""
    local_settings = {**SEARCH_SETTINGS, "statement_timeout": str(statement_timeout_ms)}
    single = len(groups) == 1
    hits: list[SearchHit] = []
    for group in groups:
        vector = None if mode == "keyword" else await query_vector(group.embedder)

        async def run(conn: Any, group: EmbedderGroup = group, vector: Any = vector) -> list[SearchHit]:
            return await search_chunks(
                conn, query_text=query, query_vector=vector, embedder=group.embedder.name, dim=group.embedder.dim,
                mode=mode, collection_ids=group.collection_ids, metadata=metadata,
                # One group pages in SQL; several merge their first offset + k hits here.
                k=k if single else offset + k, offset=offset if single else 0, candidates=candidates,
            )

        hits += await run_tenant_read(read_pool, tenant_id, run, local_settings=local_settings)
    if single:
        return hits
    hits.sort(key=lambda h: (-h.score, h.chunk_id))
    return hits[offset: offset + k]
