"""Search-result and query-embedding caches (Redis only: results are shared by every worker).

Result keys include the tenant and the versions of every collection searched (kept in memory
by storage.caches.versions, fed by Postgres NOTIFY; read with `quarry_collection_versions` -
one round trip, row-level security applies - when not known or not trusted). Storage bumps a
collection's version in the same transaction as any content change (ingest, re-ingest,
delete), so a change makes every older entry unreachable at once (O(1) invalidation, no scan);
stale entries simply expire. A search of all collections keys on all of them, so adding or
deleting a collection also changes the key.

Results have two tiers: an in-process LRU (`local_entries`, same TTL) in front of Redis. A
local hit skips the Redis round trip; it is never stale because the key carries the
versions.

Query embeddings are keyed by embedder name + sha256 of the text and stored as raw float32.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
import numpy as np
import numpy.typing as npt

from core.metrics import CACHE_ERRORS, CACHE_HITS, CACHE_MISSES
from storage.caches.guard import RedisGuard, RedisUnavailable
from storage.caches.local import MISSING, LocalTTLCache
from storage.caches.versions import VersionMap, read_versions
from storage.models import SearchHit

__all__ = ["CachedSearch", "SearchCache"]


class CachedSearch(msgspec.Struct, array_like=True):
    hits: list[SearchHit]
    next_cursor: str | None


class SearchCache:
    def __init__(self, pool: asyncpg.Pool, guard: RedisGuard, *, result_ttl_s: int, embedding_ttl_s: int,
                 local_entries: int = 0, versions: VersionMap | None = None) -> None:
        self.pool = pool
        self.versions = versions
        self.local: LocalTTLCache[str, CachedSearch] = LocalTTLCache(local_entries, result_ttl_s)
        self.guard = guard
        self.result_ttl_s = result_ttl_s
        self.embedding_ttl_s = embedding_ttl_s
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(CachedSearch)

    # --- results -------------------------------------------------------------------
    async def result_key(
        self, tenant_id: UUID, collection_ids: Sequence[UUID] | None, fingerprint: bytes, *, pool: Any = None
    ) -> str:
        """The cache key of one search. `pool`: the one the search itself reads from (a read
        replica): versions and results must come from the same server, or a lagging replica's
        older results would be cached under the primary's newer versions - so only searches on
        the primary use the in-memory versions."""
        if self.versions is not None and (pool is None or pool is self.pool):
            versions = await self.versions.versions(self.pool, tenant_id, collection_ids)
        else:
            versions = await read_versions(pool if pool is not None else self.pool, tenant_id, collection_ids)
        digest = hashlib.sha256(str(versions).encode() + b"\0" + fingerprint).hexdigest()
        return f"quarry:search:{tenant_id}:{digest}"

    async def get_result(self, key: str) -> CachedSearch | None:
        local = self.local.get(key)
        if local is not MISSING:
            CACHE_HITS.labels("search", "local").inc()
            return local  # type: ignore[return-value]  # not MISSING: a CachedSearch
        try:
            raw = await self.guard.call(lambda r: r.get(key))
        except RedisUnavailable:
            CACHE_ERRORS.labels("search").inc()
            return None
        if raw is not None:
            try:
                found = self._decoder.decode(raw)
            except msgspec.DecodeError:
                found = None
            if found is not None:
                CACHE_HITS.labels("search", "redis").inc()
                self.local.set(key, found)
                return found
        CACHE_MISSES.labels("search").inc()
        return None

    async def put_result(self, key: str, value: CachedSearch) -> None:
        self.local.set(key, value)
        try:
            await self.guard.call(lambda r: r.set(key, self._encoder.encode(value), ex=self.result_ttl_s))
        except RedisUnavailable:
            CACHE_ERRORS.labels("search").inc()

    # --- query embeddings --------------------------------------------------------------
    @staticmethod
    def embedding_key(embedder: str, text: str) -> str:
        return f"quarry:emb:{embedder}:{hashlib.sha256(text.encode()).hexdigest()}"

    async def get_embedding(self, embedder: str, text: str, dim: int) -> npt.NDArray[np.float32] | None:
        try:
            raw = await self.guard.call(lambda r: r.get(self.embedding_key(embedder, text)))
        except RedisUnavailable:
            CACHE_ERRORS.labels("embedding").inc()
            return None
        if raw is not None and len(raw) == 4 * dim:
            CACHE_HITS.labels("embedding", "redis").inc()
            return np.frombuffer(raw, dtype=np.float32)
        CACHE_MISSES.labels("embedding").inc()
        return None

    async def put_embedding(self, embedder: str, text: str, vector: npt.NDArray[np.float32]) -> None:
        data = np.asarray(vector, dtype=np.float32).tobytes()
        try:
            await self.guard.call(lambda r: r.set(self.embedding_key(embedder, text), data, ex=self.embedding_ttl_s))
        except RedisUnavailable:
            CACHE_ERRORS.labels("embedding").inc()
