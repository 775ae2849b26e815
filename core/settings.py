"""Quarry's settings: one msgspec Struct read from the environment and an optional `.env`.

This package sits below every other one (api, jobs, pipelines, rag, storage and ops all
read settings), so it imports nothing of the project's own.

Each field maps to one environment variable: ``QUARRY_<FIELD>`` in upper case, except
the conventional names in ``_ENV_NAMES_BY_FIELD`` (``DATABASE_URL``, ``REDIS_URL``, ...).
Real environment variables win over `.env`. A bad value raises `SettingsError` whose
message names the variable; the CLI prints it on one line and exits with code 2.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

__all__ = ["Settings", "SettingsError", "env_name", "load_settings", "mask_url_credentials"]

_ENV_NAMES_BY_FIELD = {
    "database_url": "DATABASE_URL",
    "database_replica_urls": "DATABASE_REPLICA_URLS",
    "redis_url": "REDIS_URL",
    "sentry_dsn": "SENTRY_DSN",
}


def _default_workers() -> int:
    return max(2, min(8, os.cpu_count() or 2))


Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


class SettingsError(ValueError):
    """A setting has an invalid value; the message names the environment variable."""


class Settings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    # --- infrastructure (unset = embedded servers under data_dir) ---
    database_url: str | None = None
    """Postgres URL of the owner/migration role. Unset: embedded Postgres under data_dir."""
    database_replica_urls: str = ""
    """Comma-separated read-replica URLs (streaming standbys of DATABASE_URL, owner-role URLs like
    it): searches and listings read from them (docs/serving.md, "Read replicas")."""
    replica_max_lag_ms: Annotated[int, msgspec.Meta(ge=1)] = 2_000
    """A replica further behind the primary than this is skipped until it catches up."""
    replica_check_interval_ms: Annotated[int, msgspec.Meta(ge=10, le=60_000)] = 500
    """How often each API process measures every replica's reachability and lag."""
    redis_url: str | None = None
    """Redis/Valkey URL. Unset: embedded Valkey under data_dir."""
    data_dir: str = ".data"
    """Where embedded Postgres/Valkey/Dagster keep their data."""

    # --- application database role (RLS is enforced on it) ---
    app_db_user: str = "quarry_app"
    app_db_password: str | None = None
    db_pool_min: Annotated[int, msgspec.Meta(ge=0)] = 1
    db_pool_max: PositiveInt = 10
    db_statement_timeout_ms: PositiveInt = 30_000

    # --- serving ---
    host: str = "127.0.0.1"
    port: Port = 8000
    api_workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = msgspec.field(
        default_factory=_default_workers
    )
    arq_workers: Annotated[int, msgspec.Meta(ge=0, le=16)] = 1
    dagster: bool = True
    """Start the Dagster webserver and daemon with `quarry up`."""
    dagster_port: Port = 3000
    max_json_bytes: PositiveInt = 1_048_576
    """Largest accepted JSON request body."""

    # --- ingestion ---
    max_upload_bytes: PositiveInt = 50 * 1024 * 1024
    """Largest accepted uploaded file (413 beyond)."""
    max_files_per_request: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 20
    chunk_tokens: Annotated[int, msgspec.Meta(ge=16, le=512)] = 256
    chunk_overlap_tokens: Annotated[int, msgspec.Meta(ge=0, le=256)] = 32
    ingest_concurrency_per_tenant: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    """Documents of one tenant processed at once across all workers."""
    ingest_max_tries: Annotated[int, msgspec.Meta(ge=1, le=20)] = 4
    tenant_max_storage_bytes: Annotated[int, msgspec.Meta(ge=0)] = 10 * 1024**3
    """Bytes of documents one tenant may keep (uploads over it: 413); 0 = unlimited. An operator
    can set another quota per tenant (PUT /v1/admin/tenants/{name}/limits, `quota`)."""
    tenant_max_documents: Annotated[int, msgspec.Meta(ge=0)] = 100_000
    """Documents one tenant may keep (uploads over it: 409); 0 = unlimited; per-tenant override as above."""
    search_statement_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=600_000)] = 5_000
    """Longest a search statement may run; a cancelled one answers 503 with Retry-After."""
    parse_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 120.0
    """Wall-clock limit for parsing and chunking one document; its worker process is killed after
    it and the document fails with the reason."""
    parse_max_memory_mb: Annotated[int, msgspec.Meta(ge=512, le=1_048_576)] = 2048
    """Address-space limit of each parsing process (RLIMIT_AS). Chunking needs about 80 bytes per
    character of text: 2048 MB fits ~20 MB of text."""
    parse_workers: Annotated[int, msgspec.Meta(ge=0, le=64)] = 0
    """Parsing processes per ingestion worker; 0 = one per CPU, at most the worker's concurrent jobs."""

    # --- embeddings ---
    embedder: Literal["minilm", "openai"] = "minilm"
    """Default embedder: all-MiniLM-L6-v2 on onnxruntime, or an OpenAI-compatible endpoint."""
    embedder_threads: Annotated[int, msgspec.Meta(ge=0, le=64)] = 0
    """onnxruntime intra-op threads for ingestion; 0 = the machine's core count."""
    query_embedder_threads: Annotated[int, msgspec.Meta(ge=0, le=64)] = 1
    """onnxruntime intra-op threads of the API's query embedder; 0 = the core count. One thread
    embeds a short query in less wall time *and* CPU than two here (4.5 vs 4.8 ms wall, 4.4 vs
    6.9 ms CPU: the second thread's hand-offs cost more than it computes)."""
    embed_batch_size: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 32
    openai_base_url: str = "https://api.openai.com/v1"
    openai_api_key: str | None = None
    openai_embed_model: str = "text-embedding-3-small"
    openai_embed_dim: PositiveInt = 1536
    openai_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    openai_max_retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 3

    # --- observability ---
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    otel_exporter: Literal["none", "console", "otlp"] = "none"
    sentry_dsn: str | None = None

    # --- chat / LLM ---
    llm_provider: Literal["offline", "openai"] = "offline"
    """offline: no model (decomposition + multi-query retrieval + extractive answer); openai: any
    OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, llama.cpp, LiteLLM)."""
    llm_base_url: str = "https://api.openai.com/v1"
    llm_api_key: str | None = None
    llm_model: str = "gpt-4o-mini"
    llm_connect_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    llm_read_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    """Longest wait for the next byte of a response (a stalled stream fails after this)."""
    llm_max_retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 2
    llm_max_connections: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 512
    agent_max_steps: Annotated[int, msgspec.Meta(ge=1, le=20)] = 4
    agent_max_tokens: Annotated[int, msgspec.Meta(ge=256)] = 16_000
    """Prompt + completion tokens one answer may spend across all its steps."""
    agent_max_answer_tokens: Annotated[int, msgspec.Meta(ge=16)] = 1024
    agent_deadline_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 120.0
    agent_history_messages: Annotated[int, msgspec.Meta(ge=0, le=100)] = 8
    """Earlier messages of a conversation given to the agent (follow-up questions)."""
    offline_min_coverage: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    """Offline provider: share of a question's content words the best sentence must contain."""
    chat_max_streams_per_tenant: Annotated[int, msgspec.Meta(ge=1)] = 32
    chat_monthly_token_budget: Annotated[int, msgspec.Meta(ge=0)] = 0
    """LLM tokens (prompt + completion) a tenant may use per calendar month (UTC); 0 = unlimited."""
    event_streams_per_tenant: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 20
    """Document-progress streams (SSE) of one tenant open at once across all API workers (429 beyond)."""
    event_stream_max_s: Annotated[float, msgspec.Meta(ge=1, le=86_400)] = 900.0
    """A document-progress stream ends after this long with a retryable `error` event (reconnect)."""

    # --- sources / syncs ---
    connector_allow_private: str = ""
    """Private, loopback and link-local destinations connectors may reach anyway (SSRF guard):
    comma-separated `host:port`, IP or CIDR entries, or `*` for all. Empty: none."""
    connector_folder_roots: str = ""
    """Directories (comma-separated) under which folder sources may read; a tenant reads only its
    `<root>/<tenant id>/` of each, and no root may overlap data_dir. Empty: no folder sources."""
    connector_max_item_bytes: PositiveInt = 50 * 1024 * 1024
    """Largest item a sync fetches (file, object or page); a source may set a lower limit."""
    connector_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 30.0
    """Longest fetch of one item (connect + download); a source may set a lower limit."""
    connector_user_agent: str = "QuarryBot/0.1 (+https://github.com/quarry-rag/quarry)"
    sync_max_runtime_s: Annotated[float, msgspec.Meta(gt=0)] = 10800.0
    """Longest sync run: it then stops as failed (nothing deleted, its lock freed; the next run
    continues where it stopped). Dagster kills a run still alive a few minutes later."""

    # --- serving: pool budget, caches, rate limits, telemetry (docs/serving.md) ---
    db_max_connections: PositiveInt = 80
    """Postgres connections the API workers and arq workers may hold together: each API
    worker's pool gets (budget - 4 per arq worker) / QUARRY_API_WORKERS, at most QUARRY_DB_POOL_MAX."""
    db_acquire_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 2.0
    """Longest wait for a pool connection; then 503 with Retry-After (never an endless queue)."""
    db_pgbouncer: bool = False
    """DATABASE_URL points at PgBouncer in transaction pooling: no prepared-statement cache."""
    api_backpressure: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Granian --backpressure (open connections per worker); 0 = max(1024, 4 x its pool size)."""
    api_graceful_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 6.0
    """On shutdown, how long in-flight requests may take to finish before workers are killed."""
    redis_timeout_ms: Annotated[int, msgspec.Meta(ge=10, le=10_000)] = 250
    """Deadline of one cache / rate-limit call to Redis; past it the API serves without Redis."""
    principal_cache_local_ttl_s: Annotated[float, msgspec.Meta(ge=0, le=300)] = 5.0
    """In-process principal cache TTL: the longest a revoked key can still work on another process."""
    principal_cache_redis_ttl_s: Annotated[int, msgspec.Meta(ge=0, le=86_400)] = 60
    search_cache_ttl_s: Annotated[int, msgspec.Meta(ge=0)] = 300
    """Search-result cache TTL (0 = off); a content change invalidates at once regardless."""
    search_cache_local_entries: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 2000
    """Search results also kept in each API process (LRU, 0 = Redis only): a hit then needs no
    Redis round trip. Keys carry the collection versions, so a local entry is never stale."""
    embedding_cache_ttl_s: Annotated[int, msgspec.Meta(ge=0)] = 86_400
    """Query-embedding cache TTL (0 = off)."""
    rate_limit_enabled: bool = True
    rate_limits: str = "read=1200/6000,write=300/1500,search=600/3000,chat=60/300,upload=120/600,admin=120/600"
    """Default requests per minute per route class, as `class=per_key/per_tenant` (0 = unlimited);
    plans and per-tenant overrides (admin API) take precedence."""
    rate_limit_fail_mode: Literal["open", "closed"] = "open"
    """When Redis is unreachable: open = serve without limits, closed = answer 503."""
    metrics_token: str = ""
    """When set, /metrics requires `Authorization: Bearer <token>`; empty = public, which is
    allowed only while QUARRY_HOST is a loopback address (settings refuse otherwise)."""
    secret_key: str = ""
    """Fernet key(s) encrypting S3 source credentials at rest (core/secrets.py), comma-separated:
    the first encrypts, all decrypt (rotation: `quarry sources rotate-secrets`). Empty: sources
    with credentials are refused (422); everything else works."""
    trusted_proxies: str = ""
    """Comma-separated CIDRs of reverse proxies whose X-Forwarded-For names the client (for the
    failed-authentication limit); empty: the socket peer is the client."""
    auth_failures_per_minute: Annotated[int, msgspec.Meta(ge=0)] = 30
    """Failed authentications (unknown keys) one client address may make per minute before its
    requests get 429 without any key lookup; 0 = unlimited."""
    otel_service_name: str = "quarry"
    sentry_environment: str = "production"
    sentry_traces_sample_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0

    def __post_init__(self) -> None:
        if self.database_url is not None and not re.match(r"postgres(ql)?://", self.database_url):
            raise ValueError("must start with postgresql:// - at `$.database_url`")
        if self.redis_url is not None and not re.match(r"(redis|rediss|unix)://", self.redis_url):
            raise ValueError("must start with redis://, rediss:// or unix:// - at `$.redis_url`")
        if any(not re.match(r"postgres(ql)?://", url) for url in self.replica_urls):
            raise ValueError("each URL must start with postgresql:// - at `$.database_replica_urls`")
        if self.replica_max_lag_ms <= self.replica_check_interval_ms:
            # Lag is measured in steps of the check interval (storage.replicas), so a bound at or
            # below it would skip a replica that is only one check behind.
            raise ValueError("must exceed QUARRY_REPLICA_CHECK_INTERVAL_MS - at `$.replica_max_lag_ms`")
        if self.db_pool_min > self.db_pool_max:
            raise ValueError("must not exceed QUARRY_DB_POOL_MAX - at `$.db_pool_min`")
        if not re.fullmatch(r"\s*(\w+=\d+/\d+\s*(,\s*\w+=\d+/\d+\s*)*)?", self.rate_limits):
            raise ValueError("expected class=per_key/per_tenant pairs, e.g. search=600/3000 - at `$.rate_limits`")
        data = Path(os.path.realpath(self.data_dir))
        for root in (Path(os.path.realpath(r.strip())) for r in self.connector_folder_roots.split(",") if r.strip()):
            if root == data or root.is_relative_to(data) or data.is_relative_to(root):
                # A tenant's folder source must never read uploads, the embedded databases or keys.
                raise ValueError(f"{root} overlaps QUARRY_DATA_DIR ({data}) - at `$.connector_folder_roots`")
        if not all(_is_fernet_key(k) for k in self.secret_key.split(",") if k.strip()):
            raise ValueError("each comma-separated key must be 32 url-safe base64-encoded bytes, as made by "
                             "cryptography's Fernet.generate_key() - at `$.secret_key`")
        if not all(_is_network(part) for part in self.trusted_proxies.split(",") if part.strip()):
            raise ValueError("expected comma-separated IP addresses or CIDRs - at `$.trusted_proxies`")
        if not self.metrics_token and not _is_loopback(self.host):
            raise ValueError("must be set when QUARRY_HOST is not a loopback address (/metrics would be "
                             "public) - at `$.metrics_token`")

    def __repr__(self) -> str:
        """Every field, credentials masked: settings end up in logs and error reports."""
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in self.__rich_repr__())})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return [(name, _masked(name, getattr(self, name))) for name in self.__struct_fields__]

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()

    @property
    def replica_urls(self) -> list[str]:
        return [u.strip() for u in self.database_replica_urls.split(",") if u.strip()]


_SECRET_FIELDS = frozenset({"app_db_password", "openai_api_key", "llm_api_key", "sentry_dsn", "metrics_token",
                            "secret_key"})
_URL_FIELDS = frozenset({"database_url", "database_replica_urls", "redis_url"})
_QUERY_PASSWORD = re.compile(r"(?i)(password=)[^&\s]*")


def mask_url_credentials(text: str) -> str:
    """`scheme://user:pass@host` -> `scheme://user:********@host` for every URL in `text` (and
    `password=` query values). Linear: each `://` is followed by one scan up to the next `/`."""
    out, start = [], 0
    while (found := text.find("://", start)) != -1:
        head = found + 3
        end = head
        while end < len(text) and text[end] not in "/?# \t\r\n,":
            end += 1
        userinfo, at, _host = text[head:end].rpartition("@")
        out.append(text[start:head])
        if at:
            user, colon, _password = userinfo.partition(":")
            out.append(f"{user}:********@" if colon else "********@")
            out.append(text[head + len(userinfo) + 1:end])
        else:
            out.append(text[head:end])
        start = end
    out.append(text[start:])
    return _QUERY_PASSWORD.sub(r"\1********", "".join(out))


def _masked(name: str, value: Any) -> Any:
    if not value:
        return value
    if name in _SECRET_FIELDS:
        return "********"
    if name in _URL_FIELDS and isinstance(value, str):
        return mask_url_credentials(value)
    return value


def _is_fernet_key(text: str) -> bool:
    try:
        return len(base64.urlsafe_b64decode(text.strip().encode("ascii"))) == 32
    except (ValueError, UnicodeEncodeError):
        return False


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def env_name(field: str) -> str:
    return _ENV_NAMES_BY_FIELD.get(field, f"QUARRY_{field.upper()}")


_FIELD_BY_ENV = {env_name(f): f for f in Settings.__struct_fields__}


def _read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments ignored; optional quotes stripped."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def load_settings(
    environ: dict[str, str] | None = None, dotenv: Path | None = Path(".env"), **overrides: Any
) -> Settings:
    """Build Settings from `.env`, then the environment, then explicit overrides."""
    raw: dict[str, Any] = {}
    sources = [_read_dotenv(dotenv) if dotenv else {}, dict(os.environ if environ is None else environ)]
    for source in sources:
        for key, value in source.items():
            field = _FIELD_BY_ENV.get(key)
            if field is not None:
                # An empty variable means "unset" for optional values.
                raw[field] = None if value == "" and field in _NULLABLE else value
    raw.update(overrides)
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_describe(str(exc))) from None


_NULLABLE = {"database_url", "redis_url", "sentry_dsn", "app_db_password", "openai_api_key", "llm_api_key"}


def _describe(message: str) -> str:
    """Turn msgspec's "... - at `$.api_workers`" into "QUARRY_API_WORKERS: ..."."""
    match = re.search(r"^(.*?) - at `\$\.(\w+)`", message)
    if not match:
        return f"invalid settings: {message}"
    reason, field = match.groups()
    return f"invalid setting {env_name(field)}: {reason}"
