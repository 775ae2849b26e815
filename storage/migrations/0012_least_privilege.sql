-- Least privilege for the application role (issue 13).
--
-- The app role (quarry_app; the API, arq workers and pipelines' tenant work) is granted by
-- storage/migrate.py `ensure_app_role`, run after every migration: it may write only tables
-- under row-level security (tenant data), only read the platform tables (plans, embedders,
-- tenants), and execute only the SECURITY DEFINER functions it needs before a tenant is known
-- (authentication, the rate limiter's plan lookup). Creating tenants, changing a tenant's plan
-- and editing plans or embedders happen as the owner role (the API's operator endpoints use an
-- owner pool of their own; CLI, Dagster), so a SQL injection through the app role cannot.

-- SECURITY DEFINER functions run with their owner's rights: nobody may call one unless granted
-- explicitly, those made by later migrations included. SECURITY INVOKER functions cannot do
-- more than their caller, so ensure_app_role grants those wholesale.
ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = 'public' AND p.prosecdef
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END $$;

-- No role but the owner creates objects in the schema (the default since PostgreSQL 15; older
-- servers let every role create functions and tables there).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
