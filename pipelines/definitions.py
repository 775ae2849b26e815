"""The one Dagster `Definitions` of the platform (`dagster ... -m pipelines.definitions`).

No `from __future__ import annotations` in Dagster modules: Dagster reads annotations at run
time. Resources come from the environment `quarry up` gives the webserver and daemon.
"""

from dagster import AssetSelection, Definitions, EnvVar, ScheduleDefinition, define_asset_job

from pipelines.assets import corpus_inventory
from pipelines.backfill_job import embedding_backfill_job
from pipelines.checks import CHECKS
from pipelines.resources import EmbedderResource, PostgresResource, QuarryResource
from pipelines.sensors import sources_sensor
from pipelines.sync_assets import source_sync, sync_job

inventory_job = define_asset_job("corpus_inventory_job", selection=AssetSelection.assets(corpus_inventory))
checks_job = define_asset_job("corpus_checks_job", selection=AssetSelection.checks(*CHECKS),
                              description="Corpus integrity checks across all tenants.")

defs = Definitions(
    assets=[corpus_inventory, source_sync],
    asset_checks=CHECKS,
    jobs=[inventory_job, checks_job, sync_job, embedding_backfill_job],
    schedules=[
        ScheduleDefinition(job=inventory_job, cron_schedule="0 * * * *"),
        ScheduleDefinition(job=checks_job, cron_schedule="15 * * * *"),
    ],
    sensors=[sources_sensor],
    resources={
        "postgres": PostgresResource(database_url=EnvVar("DATABASE_URL")),
        "quarry": QuarryResource(database_url=EnvVar("DATABASE_URL")),
        "embedder": EmbedderResource(),
    },
)
