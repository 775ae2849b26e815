"""Redis-backed caches that degrade to "no cache" when Redis is unreachable.

`guard` (short timeouts and a circuit breaker around Redis), `local` (in-process LRU with
TTL), `tiered` (local LRU in front of Redis), `principals` (API key → principal), `search`
(search results keyed by collection versions; query embeddings), `bus` (pub/sub
invalidation across processes).
"""
