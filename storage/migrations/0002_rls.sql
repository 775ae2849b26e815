-- Row-level security on every tenant-owned table. FORCE makes the table owner obey
-- the policies too; only a superuser (the embedded server's migration role) or a
-- BYPASSRLS role skips them, and the application never connects as either.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['users', 'api_keys', 'collections', 'sources', 'documents',
                             'chunks', 'embeddings', 'sync_runs', 'conversations', 'messages']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = quarry_current_tenant()) '
            'WITH CHECK (tenant_id = quarry_current_tenant())', t);
    END LOOP;
END $$;

-- A tenant sees its own row of tenants (plan, name) and nothing else.
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_self ON tenants USING (id = quarry_current_tenant());

-- The few lookups that must happen before a tenant is known run as SECURITY DEFINER
-- functions owned by the migration role. A policy for that role lets them work when
-- the owner is not a superuser (managed Postgres); the app role never matches it.
DO $$
BEGIN
    EXECUTE format('CREATE POLICY owner_all ON tenants TO %I USING (true) WITH CHECK (true)',
                   current_user);
    EXECUTE format('CREATE POLICY owner_all ON api_keys TO %I USING (true) WITH CHECK (true)',
                   current_user);
END $$;

-- Authentication: the principal behind a key hash, if the key is live.
CREATE FUNCTION quarry_auth_principal(p_key_hash bytea)
RETURNS TABLE (key_id uuid, tenant_id uuid, tenant_name text, is_operator boolean,
               role text, user_id uuid, prefix text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
    SELECT k.id, k.tenant_id, t.name, t.is_operator, k.role, k.user_id, k.prefix
    FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
    WHERE k.key_hash = p_key_hash
      AND k.revoked_at IS NULL
      AND (k.expires_at IS NULL OR k.expires_at > now())
$$;

-- Platform administration (operator tenants' admins; guarded in the API).
CREATE FUNCTION quarry_create_tenant(p_name text, p_plan text)
RETURNS SETOF tenants
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $$ INSERT INTO tenants (name, plan) VALUES (p_name, p_plan) RETURNING * $$;

CREATE FUNCTION quarry_list_tenants(p_after text, p_limit int)
RETURNS SETOF tenants
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$ SELECT * FROM tenants WHERE name > coalesce(p_after, '') ORDER BY name LIMIT p_limit $$;

CREATE FUNCTION quarry_tenant_by_name(p_name text)
RETURNS SETOF tenants
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$ SELECT * FROM tenants WHERE name = p_name $$;

REVOKE EXECUTE ON FUNCTION quarry_auth_principal(bytea) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION quarry_create_tenant(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION quarry_list_tenants(text, int) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION quarry_tenant_by_name(text) FROM PUBLIC;
