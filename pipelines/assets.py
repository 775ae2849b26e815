"""Assets. `corpus_inventory` summarises each tenant's corpus (documents by status, chunks,
embeddings per embedder) so data engineers can watch it grow in the Dagster UI."""


from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from pipelines.resources import PostgresResource

INVENTORY_SQL = """
SELECT t.name AS tenant,
       (SELECT count(*) FROM documents d WHERE d.tenant_id = t.id) AS documents,
       (SELECT count(*) FROM documents d WHERE d.tenant_id = t.id AND d.status = 'failed') AS failed,
       (SELECT count(*) FROM chunks c WHERE c.tenant_id = t.id) AS chunks,
       (SELECT count(*) FROM embeddings e WHERE e.tenant_id = t.id) AS embeddings
FROM tenants t ORDER BY t.name
"""


@asset(group_name="operations", description="Per-tenant corpus counts.")
def corpus_inventory(context: AssetExecutionContext, postgres: PostgresResource) -> MaterializeResult:  # type: ignore[type-arg]
    rows = postgres.fetch(INVENTORY_SQL)
    context.log.info("inventory of %d tenants", len(rows))
    table = "| tenant | documents | failed | chunks | embeddings |\n|---|---|---|---|---|\n" + "".join(
        f"| {r['tenant']} | {r['documents']} | {r['failed']} | {r['chunks']} | {r['embeddings']} |\n"
        for r in rows
    )
    return MaterializeResult(metadata={
        "tenants": len(rows),
        "documents": sum(r["documents"] for r in rows),
        "chunks": sum(r["chunks"] for r in rows),
        "by_tenant": MetadataValue.md(table),
    })
