"""The agent's tools over the tenant's data. Each call opens its own short `tenant_tx`, so no
pooled connection is held while the LLM thinks, and row-level security limits every query to
the calling tenant: a tool cannot return (and the agent cannot cite) another tenant's chunk."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from core.errors import NotFound, Unavailable
from rag.agent.protocol import CollectionInfo, Passage
from rag.embedders import Embedder
from storage.repositories import chunks, collections, documents
from storage.repositories.search import SEARCH_SETTINGS, search_chunks
from storage.tenancy import tenant_tx

__all__ = ["TenantToolbox"]

_CANDIDATES = 50
_MAX_COLLECTIONS = 200


class TenantToolbox:
    def __init__(
        self, pool: asyncpg.Pool, tenant_id: UUID, embedder: Embedder, collection_ids: list[UUID] | None,
        *, statement_timeout_ms: int,
    ) -> None:
        self.pool = pool
        # The same bound as /v1/search: a hostile query cannot hold a connection for long.
        self.search_settings = {**SEARCH_SETTINGS, "statement_timeout": str(statement_timeout_ms)}
        self.tenant_id = tenant_id
        self.embedder = embedder
        self.scope = collection_ids
        """None = every collection of the tenant."""

    async def search(self, query: str, *, k: int, collection: str | None) -> list[Passage]:
        ids = self.scope
        if collection is not None:
            ids = [c.id for c in await self.list_collections() if collection in (c.name, str(c.id))]
            if not ids:
                raise NotFound(f"no collection named {collection!r} is available to this chat")
        vector = (await self.embedder.embed([query]))[0]
        try:
            async with tenant_tx(self.pool, self.tenant_id, readonly=True, local_settings=self.search_settings) as conn:
                hits = await search_chunks(
                    conn, query_text=query, query_vector=vector, embedder=self.embedder.name, dim=self.embedder.dim,
                    mode="hybrid", collection_ids=ids, metadata=None, k=k, offset=0, candidates=max(_CANDIDATES, k),
                )
        except asyncpg.QueryCanceledError:  # reported to the model as a tool error, like other refusals
            raise Unavailable("the search took longer than the server allows; try a shorter query") from None
        return [Passage(chunk_id=h.chunk_id, document_id=h.document_id, collection_id=h.collection_id, title=h.title,
                        uri=h.uri, ord=h.ord, text=h.text, heading=h.heading, page=h.page, score=h.score)
                for h in hits]

    async def read_document(self, chunk_id: int, *, before: int, after: int) -> list[Passage]:
        async with tenant_tx(self.pool, self.tenant_id, readonly=True) as conn:
            rows = await chunks.neighbours(conn, chunk_id, before, after)
            rows = [r for r in rows if self.scope is None or r["collection_id"] in self.scope]
            if not rows:
                raise NotFound("that source is not available")
            doc = await documents.get_document(conn, rows[0]["document_id"])
        return [Passage(chunk_id=r["id"], document_id=r["document_id"], collection_id=r["collection_id"],
                        title=doc.title, uri=doc.uri, ord=r["ord"], text=r["text"], heading=r["heading"],
                        page=r["page"])
                for r in rows]

    async def list_collections(self) -> list[CollectionInfo]:
        async with tenant_tx(self.pool, self.tenant_id, readonly=True) as conn:
            found = await collections.list_collections(conn, None, _MAX_COLLECTIONS)
        return [CollectionInfo(id=c.id, name=c.name, description=c.description)
                for c in found if self.scope is None or c.id in self.scope]
