"""The one Dagster `Definitions` of the platform (`dagster ... -m pipelines.definitions`)."""

from __future__ import annotations

from dagster import (
    AssetSelection,
    Definitions,
    EnvVar,
    ScheduleDefinition,
    define_asset_job,
)

from pipelines.assets import corpus_inventory
from pipelines.resources import PostgresResource

inventory_job = define_asset_job("corpus_inventory_job", selection=AssetSelection.assets(corpus_inventory))

defs = Definitions(
    assets=[corpus_inventory],
    jobs=[inventory_job],
    schedules=[ScheduleDefinition(job=inventory_job, cron_schedule="0 * * * *")],
    resources={"postgres": PostgresResource(database_url=EnvVar("DATABASE_URL"))},
)
