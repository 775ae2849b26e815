-- Every change to a tenant's collections (content version bumped, active embedder switched,
-- collection created or deleted) sends NOTIFY quarry_collections with the tenant id. Each API
-- process LISTENs and keeps the search-result cache's version keys in memory instead of reading
-- them from Postgres on every search (storage/caches/versions.py). Notifications go out at
-- commit and never for a rolled-back change; several for one tenant in one transaction fold
-- into one.
CREATE FUNCTION quarry_notify_collection_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = public, pg_temp
AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('quarry_collections', OLD.tenant_id::text);
    ELSE
        PERFORM pg_notify('quarry_collections', NEW.tenant_id::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER collections_notify_change
AFTER INSERT OR DELETE OR UPDATE OF version, active_embedder ON collections
FOR EACH ROW EXECUTE FUNCTION quarry_notify_collection_change();
