-- Search indexes for the default embedder and upload identity.
--
-- embeddings.embedding has no fixed dimension (a backfill may add another embedder of
-- another dimension), so each embedder gets a partial HNSW index on a cast expression.
-- Queries must use the same expression: (embedding::vector(384)) <=> $1::vector(384).
CREATE INDEX embeddings_hnsw_minilm_l6_v2 ON embeddings
    USING hnsw ((embedding::vector(384)) vector_cosine_ops)
    WITH (m = 16, ef_construction = 64)
    WHERE embedder = 'minilm-l6-v2';

-- An uploaded file is identified by (collection, uri): uploading it again with other
-- content replaces the document's chunks; identical content is a no-op.
CREATE UNIQUE INDEX documents_collection_uri ON documents (collection_id, uri)
    WHERE uri IS NOT NULL AND source_id IS NULL;
CREATE INDEX documents_collection_hash ON documents (collection_id, content_hash);
CREATE INDEX documents_metadata ON documents USING gin (metadata jsonb_path_ops);
CREATE INDEX embeddings_collection ON embeddings (collection_id, embedder);

-- How long each ingestion stage took (parse, chunk, embed, write), for the document API.
ALTER TABLE documents ADD COLUMN timings jsonb NOT NULL DEFAULT '{}';
