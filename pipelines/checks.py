"""Asset checks on the synced corpus (all tenants; the migration role reads across them).

- embeddings_complete: every chunk has an embedding by its collection's active embedder;
- no_orphans: no chunk without its document, no embedding without its chunk or in another
  collection than its chunk, and every ready document's chunk_count matches its chunks;
- documents_match_last_run: each source has as many documents as its last successful run
  counted (a sync or a delete outside a run would break it).
"""

import asyncio
from typing import Any

import asyncpg
from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from pipelines.resources import PostgresResource

MISSING_ACTIVE_SQL = """
SELECT c.collection_id, col.active_embedder, count(*) AS missing
FROM chunks c JOIN collections col ON col.id = c.collection_id
WHERE NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.chunk_id = c.id AND e.embedder = col.active_embedder)
GROUP BY c.collection_id, col.active_embedder ORDER BY missing DESC
"""

ORPHANS_SQL = """
SELECT
  (SELECT count(*) FROM chunks c WHERE NOT EXISTS (SELECT 1 FROM documents d WHERE d.id = c.document_id))
      AS chunks_without_document,
  (SELECT count(*) FROM embeddings e WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.id = e.chunk_id))
      AS embeddings_without_chunk,
  (SELECT count(*) FROM embeddings e JOIN chunks c ON c.id = e.chunk_id WHERE c.collection_id <> e.collection_id)
      AS embeddings_in_wrong_collection,
  (SELECT count(*) FROM documents d WHERE d.status = 'ready'
       AND d.chunk_count <> (SELECT count(*) FROM chunks c WHERE c.document_id = d.id))
      AS ready_documents_with_wrong_chunk_count
"""

COUNTS_SQL = """
SELECT s.id, s.name, r.documents_total AS expected,
       (SELECT count(*) FROM documents d WHERE d.source_id = s.id) AS actual
FROM sources s
JOIN LATERAL (SELECT documents_total FROM sync_runs r
              WHERE r.source_id = s.id AND r.status = 'succeeded' ORDER BY r.finished_at DESC LIMIT 1) r ON true
WHERE NOT EXISTS (SELECT 1 FROM sync_runs x WHERE x.source_id = s.id AND x.status = 'running')
"""


def _fetch(url: str, sql: str) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(url)
        try:
            return [dict(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(run())


def _table(rows: list[dict[str, Any]], columns: list[str]) -> MetadataValue:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return MetadataValue.md(head + "".join("| " + " | ".join(str(r[c]) for c in columns) + " |\n" for r in rows[:20]))


@asset_check(asset="embeddings", description="Every chunk has an embedding by its collection's active embedder.")
def embeddings_complete(postgres: PostgresResource) -> AssetCheckResult:
    rows = _fetch(postgres.database_url, MISSING_ACTIVE_SQL)
    missing = sum(int(r["missing"]) for r in rows)
    return AssetCheckResult(passed=missing == 0, metadata={
        "chunks_missing_active_embedding": missing, "collections_affected": len(rows),
        "worst": _table(rows, ["collection_id", "active_embedder", "missing"]),
    })


@asset_check(asset="chunks", description="No orphan chunks or embeddings; chunk counts of ready documents hold.")
def no_orphans(postgres: PostgresResource) -> AssetCheckResult:
    counts = {k: int(v) for k, v in _fetch(postgres.database_url, ORPHANS_SQL)[0].items()}
    return AssetCheckResult(passed=not any(counts.values()), metadata=dict(counts))


@asset_check(asset="source_documents", description="Each source has the document count of its last successful run.")
def documents_match_last_run(postgres: PostgresResource) -> AssetCheckResult:
    rows = _fetch(postgres.database_url, COUNTS_SQL)
    wrong = [r for r in rows if int(r["expected"] or 0) != int(r["actual"])]
    return AssetCheckResult(passed=not wrong, severity=AssetCheckSeverity.WARN, metadata={
        "sources_checked": len(rows), "sources_mismatched": len(wrong),
        "mismatches": _table(wrong, ["id", "name", "expected", "actual"]),
    })


CHECKS = [embeddings_complete, no_orphans, documents_match_last_run]
