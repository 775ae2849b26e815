-- Data-source syncs and embedding backfills (Dagster runs them; see docs/syncs.md).

-- Each synced document remembers the upstream version it was made from (mtime+size, ETag,
-- Last-Modified): an unchanged item is recognised without fetching, parsing or embedding it.
ALTER TABLE documents ADD COLUMN source_cursor jsonb;

-- The latest cron tick the scheduler queued a run for (so a tick is queued once).
ALTER TABLE sources ADD COLUMN last_scheduled_at timestamptz;

ALTER TABLE sync_runs
    ADD COLUMN trigger text NOT NULL DEFAULT 'manual' CHECK (trigger IN ('manual', 'schedule', 'api')),
    ADD COLUMN queued_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN documents_total int,                   -- documents of the source after the run
    ADD COLUMN chunks_written int NOT NULL DEFAULT 0,
    ADD COLUMN complete boolean;                      -- listing complete (deletions applied)?
-- At most one queued and one running run per source: "run now" is idempotent under races.
CREATE UNIQUE INDEX sync_runs_one_queued ON sync_runs (source_id) WHERE status = 'queued';
CREATE UNIQUE INDEX sync_runs_one_running ON sync_runs (source_id) WHERE status = 'running';
CREATE INDEX sync_runs_queued ON sync_runs (queued_at) WHERE status = 'queued';

-- Embedders known to the platform, beyond the built-in default: how to rebuild one from
-- its name (search must embed a query with a collection's active embedder). No secrets:
-- API keys come from the settings of the process that uses the embedder.
CREATE TABLE embedders (
    name       text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9:._/@-]{0,119}$'),
    kind       text NOT NULL CHECK (kind IN ('minilm', 'openai')),
    model      text NOT NULL DEFAULT '',
    dim        int NOT NULL CHECK (dim > 0 AND dim <= 16000),
    base_url   text,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One row per backfill of a collection to an embedder; a rerun resumes the same row.
CREATE TABLE embedding_backfills (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    collection_id uuid NOT NULL,
    embedder      text NOT NULL REFERENCES embedders(name),
    status        text NOT NULL DEFAULT 'running'
                  CHECK (status IN ('running', 'failed', 'completed')),
    total_chunks  int NOT NULL DEFAULT 0,
    embedded      int NOT NULL DEFAULT 0,             -- chunks embedded by this backfill
    previous_embedder text,
    error         text,
    dagster_run_id text,
    started_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    switched_at   timestamptz,
    FOREIGN KEY (tenant_id, collection_id) REFERENCES collections (tenant_id, id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX embedding_backfills_one_running ON embedding_backfills (collection_id)
    WHERE status = 'running';
ALTER TABLE embedding_backfills ENABLE ROW LEVEL SECURITY;
ALTER TABLE embedding_backfills FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON embedding_backfills
    USING (tenant_id = quarry_current_tenant())
    WITH CHECK (tenant_id = quarry_current_tenant());

-- Dagster (sensor, asset checks, index builds) works across tenants as the migration role.
-- A superuser skips RLS anyway; on managed Postgres the owner is not one, so it gets
-- explicit policies. The application role never matches them.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['sources', 'sync_runs', 'collections', 'documents', 'chunks',
                             'embeddings', 'embedding_backfills']
    LOOP
        EXECUTE format('CREATE POLICY owner_all ON %I TO %I USING (true) WITH CHECK (true)',
                       t, current_user);
    END LOOP;
END $$;
