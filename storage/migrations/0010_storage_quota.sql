-- Per-tenant storage quota: documents and bytes a tenant may keep.
-- `quota` holds an operator's overrides {"storage_bytes": n, "documents": n}; a missing field
-- falls back to the settings' defaults (QUARRY_TENANT_MAX_STORAGE_BYTES,
-- QUARRY_TENANT_MAX_DOCUMENTS); 0 means unlimited. Usage is counted from `documents` in the
-- upload's own transaction under a per-tenant advisory lock (storage/repositories/documents.py),
-- so there is no counter to drift.
ALTER TABLE tenants
    ADD COLUMN quota jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(quota) = 'object');

-- Counting a tenant's documents and bytes is an index-only scan.
CREATE INDEX documents_tenant_size ON documents (tenant_id) INCLUDE (size_bytes);

-- The app role cannot UPDATE tenants: operators set a tenant's quota through this function
-- (guarded in the API). NULL leaves the overrides as they are.
CREATE FUNCTION quarry_set_tenant_quota(p_name text, p_quota jsonb)
RETURNS SETOF tenants
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
    UPDATE tenants SET quota = coalesce(p_quota, quota) WHERE name = p_name RETURNING *
$$;

REVOKE EXECUTE ON FUNCTION quarry_set_tenant_quota(text, jsonb) FROM PUBLIC;
