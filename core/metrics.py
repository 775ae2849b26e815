"""Quarry's Prometheus metrics, by name, for every package to increment.

Multi-process: Granian runs several API worker processes and arq workers run in their own.
When ``PROMETHEUS_MULTIPROC_DIR`` is set (``quarry up`` sets it under the data dir and empties
it at start), prometheus_client keeps each process's values in memory-mapped files there and
`/metrics` aggregates all of them (see `api.metrics`). The variable must be set before this
module is first imported, which is why the supervisor puts it in the children's environment.
Without it (tests, a single process) the metrics live in the default in-process registry.

Gauges say how they combine across processes: ``livesum`` sums the live processes' values
(in-flight requests, pool connections).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "CACHE_ERRORS", "CACHE_HITS", "CACHE_MISSES", "DB_POOL_IN_USE", "DB_POOL_SIZE", "DB_POOL_TIMEOUTS",
    "DB_POOL_WAITING", "DB_READS", "DB_REPLICA_HEALTHY", "DB_REPLICA_LAG", "HTTP_IN_FLIGHT", "HTTP_REQUESTS",
    "HTTP_REQUEST_DURATION", "JOB_DURATION", "LLM_TOKENS",
    "RATE_LIMIT_REJECTIONS", "RATE_LIMIT_UNAVAILABLE",
]

# Latency buckets from 2.5 ms (a cached search) to 60 s (a long chat run).
_LATENCY_BUCKETS = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

HTTP_REQUEST_DURATION = Histogram(
    "quarry_http_request_duration_seconds", "HTTP request duration by route template, method and status",
    ["route", "method", "status"], buckets=_LATENCY_BUCKETS,
)
HTTP_REQUESTS = Counter(
    "quarry_http_requests", "HTTP requests by route template, method and status", ["route", "method", "status"],
)
HTTP_IN_FLIGHT = Gauge(
    "quarry_http_requests_in_flight", "HTTP requests being processed", multiprocess_mode="livesum",
)

DB_POOL_SIZE = Gauge("quarry_db_pool_size", "Open connections in the API's Postgres pools",
                     ["pool"], multiprocess_mode="livesum")
DB_POOL_IN_USE = Gauge("quarry_db_pool_in_use", "Connections checked out of the pools",
                       ["pool"], multiprocess_mode="livesum")
DB_POOL_WAITING = Gauge("quarry_db_pool_waiting", "Requests waiting for a pool connection",
                        ["pool"], multiprocess_mode="livesum")
DB_POOL_TIMEOUTS = Counter("quarry_db_pool_acquire_timeouts", "Pool acquisitions that timed out (answered 503)",
                           ["pool"])
DB_READS = Counter("quarry_db_reads", "Searches and listings by the pool that served them (replicaN or primary)",
                   ["pool"])
DB_REPLICA_HEALTHY = Gauge("quarry_db_replica_healthy", "1 when a read replica is reachable and within the lag bound",
                           ["replica"], multiprocess_mode="livemin")
DB_REPLICA_LAG = Gauge("quarry_db_replica_lag_seconds",
                       "How far a read replica is behind the primary, at most (in steps of the check interval)",
                       ["replica"], multiprocess_mode="livemax")

CACHE_HITS = Counter("quarry_cache_hits", "Cache hits by cache and tier (local = in-process, redis)",
                     ["cache", "tier"])
CACHE_MISSES = Counter("quarry_cache_misses", "Cache misses by cache", ["cache"])
CACHE_ERRORS = Counter("quarry_cache_errors", "Cache operations skipped because Redis failed", ["cache"])

RATE_LIMIT_REJECTIONS = Counter("quarry_rate_limit_rejections", "Requests refused with 429, by route class and scope",
                                ["rate_class", "scope"])
RATE_LIMIT_UNAVAILABLE = Counter("quarry_rate_limit_unavailable",
                                 "Rate-limit checks that could not reach Redis, by outcome (open / closed)",
                                 ["mode"])

JOB_DURATION = Histogram("quarry_job_duration_seconds", "arq job duration by job and outcome",
                         ["job", "status"], buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900))

LLM_TOKENS = Counter("quarry_llm_tokens", "LLM tokens by provider, model and kind (prompt / completion)",
                     ["provider", "model", "kind"])
