-- References between tenant-owned rows must stay within one tenant. Row-level security
-- only checks a row's own tenant_id, so with single-column foreign keys tenant A could
-- attach a document to tenant B's collection (or probe whether B's ids exist). Every
-- reference now includes tenant_id, pointing at a (tenant_id, id) key of the parent.

ALTER TABLE users         ADD CONSTRAINT users_tenant_id_id_key         UNIQUE (tenant_id, id);
ALTER TABLE collections   ADD CONSTRAINT collections_tenant_id_id_key   UNIQUE (tenant_id, id);
ALTER TABLE sources       ADD CONSTRAINT sources_tenant_id_id_key       UNIQUE (tenant_id, id);
ALTER TABLE documents     ADD CONSTRAINT documents_tenant_id_id_key     UNIQUE (tenant_id, id);
ALTER TABLE chunks        ADD CONSTRAINT chunks_tenant_id_id_key        UNIQUE (tenant_id, id);
ALTER TABLE conversations ADD CONSTRAINT conversations_tenant_id_id_key UNIQUE (tenant_id, id);

ALTER TABLE api_keys DROP CONSTRAINT api_keys_user_id_fkey,
    ADD CONSTRAINT api_keys_user_fkey FOREIGN KEY (tenant_id, user_id)
        REFERENCES users (tenant_id, id) ON DELETE CASCADE;

ALTER TABLE sources DROP CONSTRAINT sources_collection_id_fkey,
    ADD CONSTRAINT sources_collection_fkey FOREIGN KEY (tenant_id, collection_id)
        REFERENCES collections (tenant_id, id) ON DELETE CASCADE;

ALTER TABLE documents DROP CONSTRAINT documents_collection_id_fkey,
    DROP CONSTRAINT documents_source_id_fkey,
    ADD CONSTRAINT documents_collection_fkey FOREIGN KEY (tenant_id, collection_id)
        REFERENCES collections (tenant_id, id) ON DELETE CASCADE,
    ADD CONSTRAINT documents_source_fkey FOREIGN KEY (tenant_id, source_id)
        REFERENCES sources (tenant_id, id) ON DELETE SET NULL (source_id);

ALTER TABLE chunks DROP CONSTRAINT chunks_collection_id_fkey,
    DROP CONSTRAINT chunks_document_id_fkey,
    ADD CONSTRAINT chunks_collection_fkey FOREIGN KEY (tenant_id, collection_id)
        REFERENCES collections (tenant_id, id) ON DELETE CASCADE,
    ADD CONSTRAINT chunks_document_fkey FOREIGN KEY (tenant_id, document_id)
        REFERENCES documents (tenant_id, id) ON DELETE CASCADE;

ALTER TABLE embeddings DROP CONSTRAINT embeddings_chunk_id_fkey,
    DROP CONSTRAINT embeddings_collection_id_fkey,
    ADD CONSTRAINT embeddings_chunk_fkey FOREIGN KEY (tenant_id, chunk_id)
        REFERENCES chunks (tenant_id, id) ON DELETE CASCADE,
    ADD CONSTRAINT embeddings_collection_fkey FOREIGN KEY (tenant_id, collection_id)
        REFERENCES collections (tenant_id, id) ON DELETE CASCADE;

ALTER TABLE sync_runs DROP CONSTRAINT sync_runs_source_id_fkey,
    ADD CONSTRAINT sync_runs_source_fkey FOREIGN KEY (tenant_id, source_id)
        REFERENCES sources (tenant_id, id) ON DELETE CASCADE;

ALTER TABLE messages DROP CONSTRAINT messages_conversation_id_fkey,
    ADD CONSTRAINT messages_conversation_fkey FOREIGN KEY (tenant_id, conversation_id)
        REFERENCES conversations (tenant_id, id) ON DELETE CASCADE;
