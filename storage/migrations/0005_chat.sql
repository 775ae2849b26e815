-- Chat: how each assistant message ended, and per-tenant monthly LLM token usage.

-- A message records how its run ended: complete, error (e.g. the LLM stayed unavailable or the
-- deadline passed; `error` holds {code, message}) or cancelled (the client went away).
ALTER TABLE messages
    ADD COLUMN status text NOT NULL DEFAULT 'complete'
        CHECK (status IN ('complete', 'error', 'cancelled')),
    ADD COLUMN error jsonb,
    ADD COLUMN finish_reason text,
    ADD COLUMN model text;

-- LLM tokens per tenant and calendar month (UTC), for the monthly budget (429 once spent).
CREATE TABLE llm_usage (
    tenant_id         uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    month             date NOT NULL CHECK (extract(day FROM month) = 1),
    prompt_tokens     bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    requests          bigint NOT NULL DEFAULT 0,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, month)
);

ALTER TABLE llm_usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE llm_usage FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON llm_usage
    USING (tenant_id = quarry_current_tenant())
    WITH CHECK (tenant_id = quarry_current_tenant());
