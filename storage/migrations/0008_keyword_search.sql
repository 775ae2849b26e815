-- Keyword search that the GIN index can serve under row-level security, and vector search
-- that counts its scope.
--
-- 1. Postgres evaluates the RLS policy before any user condition whose function is not
--    LEAKPROOF, and a condition that must wait cannot be an index condition. `tsvector @@
--    tsquery` (ts_match_vq) is not marked LEAKPROOF, so for the app role every full-text
--    search read every row of the tenant (about 40 ms per 50k chunks before any ranking) while
--    the owner got a 1 ms GIN scan. ts_match_vq only compares its arguments and raises no error
--    that depends on them, so it is marked LEAKPROOF. Only a superuser may do so: the embedded
--    server's migration role is one; on managed Postgres run this ALTER once as the platform's
--    superuser (docs/search.md) - keyword search stays correct without it, only slower.
DO $$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        ALTER FUNCTION pg_catalog.ts_match_vq(tsvector, tsquery) LEAKPROOF;
    ELSE
        RAISE WARNING 'not a superuser: ts_match_vq stays NOT LEAKPROOF, so keyword search cannot use '
                      'its GIN index under row-level security (see docs/search.md)';
    END IF;
END $$;

-- 2. The keyword side matches in tiers (all query words, then all but one, then all but two)
--    instead of OR-ing every word: an OR of a question's words matches a large share of a
--    corpus, and ranking every match was the cost of hybrid search. This builds the tier's
--    tsquery from the query's lexemes: an OR of the ANDs of every subset that leaves out
--    `dropped` (1 or 2) of them; NULL when fewer than two lexemes would remain or when the query
--    has more than `max_lexemes` (GIN reads every operand's posting list once per subset: 66
--    subsets of a 12-word question took ~50 ms).
CREATE FUNCTION quarry_tsquery_all_but(config regconfig, query text, dropped int, max_lexemes int)
RETURNS tsquery
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    WITH lex AS (
        SELECT l, row_number() OVER (ORDER BY l) AS i
        FROM unnest(tsvector_to_array(to_tsvector(config, query))) AS l
    ),
    left_out AS (
        SELECT ARRAY[a.i] AS i FROM lex a WHERE dropped = 1
        UNION ALL
        SELECT ARRAY[a.i, b.i] FROM lex a JOIN lex b ON a.i < b.i WHERE dropped = 2
    )
    SELECT CASE WHEN (SELECT count(*) FROM lex) - dropped < 2 OR (SELECT count(*) FROM lex) > max_lexemes
                THEN NULL ELSE (
        SELECT string_agg('(' || (SELECT string_agg(quote_literal(lex.l), ' & ' ORDER BY lex.i)
                                  FROM lex WHERE lex.i <> ALL (left_out.i)) || ')', ' | ' ORDER BY left_out.i)
        FROM left_out)::tsquery
    END
$$;

-- 3. Vector search counts its scope (up to a bound) to choose between HNSW and an exact scan
--    (storage/repositories/search.py); a tenant-wide scope needs this index to be counted.
CREATE INDEX embeddings_tenant_embedder ON embeddings (tenant_id, embedder);
