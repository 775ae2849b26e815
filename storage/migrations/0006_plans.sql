-- Serving: rate-limit plans, per-tenant overrides, and the lookups the caches need.

-- A plan is a named set of rate limits; a tenant points at one by name (tenants.plan) and
-- may carry overrides of its own. Limits are {"<route class>": {"key": n, "tenant": n}},
-- requests per minute per API key and per tenant (0 = unlimited). A class or field that
-- is missing falls back to the plan, then to the settings' defaults (QUARRY_RATE_LIMITS).
-- Plans are platform-wide (no tenant_id, no RLS); only operator admins change them.
CREATE TABLE plans (
    name       text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    limits     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(limits) = 'object'),
    updated_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE tenants
    ADD COLUMN rate_limits jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(rate_limits) = 'object');

-- The app role cannot UPDATE tenants (a tenant could otherwise edit its own row): operators
-- change a tenant's plan and overrides through this function (guarded in the API).
CREATE FUNCTION quarry_set_tenant_limits(p_name text, p_plan text, p_limits jsonb)
RETURNS SETOF tenants
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
    UPDATE tenants SET plan = coalesce(p_plan, plan), rate_limits = coalesce(p_limits, rate_limits)
    WHERE name = p_name RETURNING *
$$;

-- What the rate limiter needs before any tenant transaction: the tenant's plan and its own
-- overrides (the plan's limits are read from `plans`, cached separately).
CREATE FUNCTION quarry_tenant_limits(p_tenant uuid)
RETURNS TABLE (plan text, tenant_limits jsonb)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$ SELECT t.plan, t.rate_limits FROM tenants t WHERE t.id = p_tenant $$;

-- Authentication with the key's expiry, so a cached principal never outlives its key.
CREATE FUNCTION quarry_auth_lookup(p_key_hash bytea)
RETURNS TABLE (key_id uuid, tenant_id uuid, tenant_name text, is_operator boolean,
               role text, user_id uuid, prefix text, expires_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
    SELECT k.id, k.tenant_id, t.name, t.is_operator, k.role, k.user_id, k.prefix, k.expires_at
    FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
    WHERE k.key_hash = p_key_hash
      AND k.revoked_at IS NULL
      AND (k.expires_at IS NULL OR k.expires_at > now())
$$;

-- The search-result cache keys on the versions of the collections searched (every content
-- change bumps collections.version). One round trip, no explicit transaction: the tenant is
-- set local to the statement's own transaction, so row-level security applies as usual
-- (SECURITY INVOKER). NULL ids = every collection of the tenant; a deleted or foreign id
-- simply drops out of the list, which changes the key too.
CREATE FUNCTION quarry_collection_versions(p_tenant uuid, p_ids uuid[])
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = public, pg_temp
AS $$
BEGIN
    PERFORM set_config('app.tenant_id', p_tenant::text, true);
    RETURN (SELECT coalesce(string_agg(id::text || ':' || version, ',' ORDER BY id), '')
            FROM collections WHERE p_ids IS NULL OR id = ANY(p_ids));
END
$$;

REVOKE EXECUTE ON FUNCTION quarry_set_tenant_limits(text, text, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION quarry_tenant_limits(uuid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION quarry_auth_lookup(bytea) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION quarry_collection_versions(uuid, uuid[]) FROM PUBLIC;
