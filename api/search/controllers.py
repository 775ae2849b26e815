"""Search: hybrid (vector + full-text, fused by RRF), vector-only or keyword-only."""

from __future__ import annotations

import hashlib
import time
from uuid import UUID

import msgspec
from litestar import Controller, Request, post
from litestar.datastructures import State
from litestar.params import JSONBody

from api import paths
from api.deps import DbPool
from api.pagination import decode_cursor, encode_cursor
from api.search.schemas import SearchRequest, SearchResponse
from core.errors import BadRequest, Unprocessable
from storage.models import Principal
from storage.repositories.search import SEARCH_SETTINGS, search_chunks
from storage.tenancy import tenant_tx

AnyRequest = Request[Principal, UUID, State]
MAX_OFFSET = 500
MIN_CANDIDATES = 50  # per retriever: enough depth for fusion to matter


def _fingerprint(data: SearchRequest) -> str:
    """Ties a cursor to the query it came from."""
    basis = msgspec.json.encode([data.query, data.collections, data.filter, data.k, data.mode])
    return hashlib.sha256(basis).hexdigest()[:16]


class SearchController(Controller):
    tags = ["search"]

    @post(paths.SEARCH, operation_id="search", status_code=200)
    async def search(self, data: JSONBody[SearchRequest], request: AnyRequest, pool: DbPool) -> SearchResponse:
        """Search the tenant's documents; `next_cursor` pages through further hits."""
        started = time.perf_counter()
        query = data.query.strip()
        if not query:
            raise Unprocessable("query is empty")
        offset = 0
        if data.cursor:
            values = decode_cursor(data.cursor)
            if len(values) != 2 or values[1] != _fingerprint(data) or not isinstance(values[0], int):
                raise BadRequest("the cursor does not belong to this query")
            offset = values[0]
        embedder = request.app.state.embedder
        vector = None if data.mode == "keyword" else (await embedder.embed([query]))[0]
        async with tenant_tx(pool, request.user.tenant_id, readonly=True, local_settings=SEARCH_SETTINGS) as conn:
            hits = await search_chunks(
                conn, query_text=query, query_vector=vector, embedder=embedder.name, dim=embedder.dim,
                mode=data.mode, collection_ids=data.collections,
                metadata=data.filter.metadata if data.filter else None,
                k=data.k + 1, offset=offset, candidates=max(MIN_CANDIDATES, offset + data.k + 1),
            )
        more = len(hits) > data.k and offset + data.k < MAX_OFFSET
        hits = hits[: data.k]
        next_cursor = encode_cursor([offset + data.k, _fingerprint(data)]) if more else None
        return SearchResponse(hits=hits, next_cursor=next_cursor, mode=data.mode,
                              took_ms=round((time.perf_counter() - started) * 1000, 2))
