-- Core schema: tenants, principals, the document corpus, sources and conversations.
-- Every tenant-owned table carries tenant_id and is guarded by row-level security
-- (see 0002_rls.sql). Keys are uuid except chunk ids (bigint: they are many and
-- appear in every vector/full-text index).

CREATE EXTENSION IF NOT EXISTS vector;

-- The tenant of the current transaction, set by storage.tenancy.tenant_tx with
-- set_config('app.tenant_id', ..., true). Unset or empty -> NULL -> no rows match.
CREATE FUNCTION quarry_current_tenant() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT nullif(current_setting('app.tenant_id', true), '')::uuid $$;

CREATE TABLE tenants (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    -- an operator tenant's admins may manage other tenants (platform administration)
    is_operator boolean NOT NULL DEFAULT false,
    plan        text NOT NULL DEFAULT 'default',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    email      text NOT NULL,
    name       text NOT NULL DEFAULT '',
    role       text NOT NULL CHECK (role IN ('admin', 'member', 'reader')),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, email)
);

CREATE TABLE api_keys (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    user_id      uuid REFERENCES users(id) ON DELETE CASCADE,
    name         text NOT NULL DEFAULT '',
    prefix       text NOT NULL UNIQUE,            -- shown to humans, e.g. in listings
    key_hash     bytea NOT NULL UNIQUE,           -- sha256 of the whole key; the key is never stored
    role         text NOT NULL CHECK (role IN ('admin', 'member', 'reader')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, created_at);

CREATE TABLE collections (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name        text NOT NULL,
    description text NOT NULL DEFAULT '',
    -- bumped on every content change: result caches key on it (O(1) invalidation)
    version     bigint NOT NULL DEFAULT 1,
    -- the embedder search uses; a backfill switches it atomically when complete
    active_embedder text NOT NULL DEFAULT 'minilm-l6-v2',
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

CREATE TABLE sources (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id      uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    collection_id  uuid NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
    name           text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('folder', 'website', 's3')),
    config         jsonb NOT NULL DEFAULT '{}',
    schedule       text,                           -- cron expression; NULL = manual only
    enabled        boolean NOT NULL DEFAULT true,
    cursor         jsonb NOT NULL DEFAULT '{}',    -- incremental-sync state per item
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

CREATE TABLE documents (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    collection_id uuid NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
    source_id     uuid REFERENCES sources(id) ON DELETE SET NULL,
    title         text NOT NULL DEFAULT '',
    uri           text,                            -- upstream location (file path, URL, s3 key)
    mime_type     text NOT NULL DEFAULT 'text/plain',
    content_hash  text,                            -- sha256 of the raw bytes: idempotent ingestion
    size_bytes    bigint NOT NULL DEFAULT 0,
    status        text NOT NULL DEFAULT 'queued'
                  CHECK (status IN ('queued', 'processing', 'ready', 'failed')),
    error         text,
    attempts      int NOT NULL DEFAULT 0,
    chunk_count   int NOT NULL DEFAULT 0,
    metadata      jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz
);
CREATE INDEX documents_collection ON documents (tenant_id, collection_id, created_at, id);
CREATE INDEX documents_status ON documents (tenant_id, status);
CREATE UNIQUE INDEX documents_source_uri ON documents (source_id, uri) WHERE source_id IS NOT NULL;

CREATE TABLE chunks (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    collection_id uuid NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
    document_id   uuid NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    ord           int NOT NULL,                    -- position within the document
    text          text NOT NULL,
    heading       text,
    page          int,
    char_start    int NOT NULL,
    char_end      int NOT NULL,
    token_count   int NOT NULL,
    tsv           tsvector NOT NULL,
    UNIQUE (document_id, ord)
);
CREATE INDEX chunks_tsv ON chunks USING gin (tsv);
CREATE INDEX chunks_tenant_collection ON chunks (tenant_id, collection_id);

-- One row per (chunk, embedder): a backfill writes a second embedder side by side.
-- The column has no fixed dimension; each embedder gets a partial HNSW index on a
-- cast expression, e.g. ((embedding::vector(384)) vector_cosine_ops) WHERE embedder = '...'.
CREATE TABLE embeddings (
    chunk_id      bigint NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,
    tenant_id     uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    collection_id uuid NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
    embedder      text NOT NULL,
    dim           int NOT NULL CHECK (dim > 0),
    embedding     vector NOT NULL CHECK (vector_dims(embedding) = dim),
    PRIMARY KEY (chunk_id, embedder)
);

CREATE TABLE sync_runs (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    source_id   uuid NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    status      text NOT NULL DEFAULT 'running'
                CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    added       int NOT NULL DEFAULT 0,
    updated     int NOT NULL DEFAULT 0,
    deleted     int NOT NULL DEFAULT 0,
    skipped     int NOT NULL DEFAULT 0,
    failed      int NOT NULL DEFAULT 0,
    errors      jsonb NOT NULL DEFAULT '[]',
    dagster_run_id text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX sync_runs_source ON sync_runs (tenant_id, source_id, started_at DESC);

CREATE TABLE conversations (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    title      text NOT NULL DEFAULT '',
    collection_ids uuid[],                         -- NULL = all collections of the tenant
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conversations_tenant ON conversations (tenant_id, created_at DESC, id);

CREATE TABLE messages (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    conversation_id uuid NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role            text NOT NULL CHECK (role IN ('user', 'assistant', 'tool', 'system')),
    content         text NOT NULL,
    citations       jsonb NOT NULL DEFAULT '[]',
    tool_calls      jsonb NOT NULL DEFAULT '[]',
    prompt_tokens   int NOT NULL DEFAULT 0,
    completion_tokens int NOT NULL DEFAULT 0,
    latency_ms      int,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_conversation ON messages (conversation_id, created_at);
