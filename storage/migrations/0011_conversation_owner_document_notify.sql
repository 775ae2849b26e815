-- 1. Conversations belong to the principal that created them (issue 13).
--
-- A conversation and its messages are visible and writable only by their owner: the user behind
-- the calling key when the key has one, else the key itself. The API sets `app.principal_id`
-- next to `app.tenant_id`, transaction-local, in the same statement (storage/tenancy.py,
-- `principal_settings`). A RESTRICTIVE policy is ANDed with tenant_isolation: the right tenant
-- is not enough, the owner must match too. Without the setting nothing is visible.
--
-- Conversations created before this migration have no owner (NULL): nobody can see them through
-- the API - we cannot know who created them, and "visible to every member" would leak one
-- member's questions to the others. An operator can hand them to an owner (docs/chat.md).
--
-- The table owner (the migration role) is let through, as with 0002's owner_all policies, so an
-- operator can audit one tenant's conversations (docs/chat.md): the app never connects as it.
CREATE FUNCTION quarry_current_principal() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT nullif(current_setting('app.principal_id', true), '')::uuid $$;

ALTER TABLE conversations ADD COLUMN owner_id uuid;
ALTER TABLE messages ADD COLUMN owner_id uuid;
ALTER TABLE conversations ALTER COLUMN owner_id SET DEFAULT quarry_current_principal();
ALTER TABLE messages ALTER COLUMN owner_id SET DEFAULT quarry_current_principal();

-- A message has its conversation's owner (the FK refuses a message of principal A in B's
-- conversation even though foreign-key checks ignore row-level security). ON UPDATE CASCADE:
-- an operator who reassigns a conversation moves its messages with it.
ALTER TABLE conversations ADD CONSTRAINT conversations_tenant_owner_id_key UNIQUE (tenant_id, owner_id, id);
ALTER TABLE messages ADD CONSTRAINT messages_conversation_owner_fkey FOREIGN KEY (tenant_id, owner_id, conversation_id)
    REFERENCES conversations (tenant_id, owner_id, id) ON DELETE CASCADE ON UPDATE CASCADE;

-- Listing is per owner now: newest first within (tenant, owner).
DROP INDEX conversations_tenant;
CREATE INDEX conversations_owner ON conversations (tenant_id, owner_id, created_at DESC, id);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['conversations', 'messages']
    LOOP
        EXECUTE format(
            'CREATE POLICY owner_only ON %I AS RESTRICTIVE '
            'USING (owner_id = quarry_current_principal() OR current_user = %L) '
            'WITH CHECK (owner_id = quarry_current_principal() OR current_user = %L)',
            t, current_user, current_user);
    END LOOP;
END $$;


-- 2. Document progress is pushed, not polled (issue 13).
--
-- Each change of a document's status or chunk count sends NOTIFY quarry_documents with
-- '<tenant id>:<document id>'; a statement that deletes documents sends the tenant id once
-- (a collection's deletion may cascade to thousands of rows). Each API process LISTENs on one
-- connection and wakes the progress streams watching them (api/documents/progress.py).
-- Notifications go out at commit, never for a rolled-back change.
CREATE FUNCTION quarry_notify_document_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = public, pg_temp
AS $$
BEGIN
    PERFORM pg_notify('quarry_documents', NEW.tenant_id::text || ':' || NEW.id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER documents_notify_progress
AFTER UPDATE OF status, chunk_count ON documents
FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.chunk_count IS DISTINCT FROM NEW.chunk_count)
EXECUTE FUNCTION quarry_notify_document_change();

CREATE FUNCTION quarry_notify_documents_deleted() RETURNS trigger
LANGUAGE plpgsql SET search_path = public, pg_temp
AS $$
BEGIN
    PERFORM pg_notify('quarry_documents', tenant::text) FROM (SELECT DISTINCT tenant_id AS tenant FROM gone) g;
    RETURN NULL;
END
$$;

CREATE TRIGGER documents_notify_deleted
AFTER DELETE ON documents REFERENCING OLD TABLE AS gone
FOR EACH STATEMENT EXECUTE FUNCTION quarry_notify_documents_deleted();
