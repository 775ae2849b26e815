"""Validation of sources for the API and CLI: kind config, cron schedule, secrets."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from croniter import croniter

from core.errors import Unprocessable
from core.settings import Settings
from rag.connectors import ConfigError, FolderRoots, NetPolicy, redact_config, validate_config
from rag.connectors.config import SECRET_FIELDS
from storage.repositories.sources import Source
from storage.repositories.sync_runs import SyncRun

from .schemas import SourceOut

__all__ = ["check_config", "check_schedule", "merge_secrets", "next_tick", "source_out"]


def _invalid(field: str, message: str) -> Unprocessable:
    return Unprocessable(f"{field}: {message}", errors=[{"key": field, "message": message, "source": "body"}])


def check_schedule(schedule: str | None) -> str | None:
    if schedule is None:
        return None
    expression = " ".join(schedule.split())
    if len(expression.split(" ")) != 5 or not croniter.is_valid(expression):
        raise _invalid("schedule", f"{schedule!r} is not a valid cron expression "
                                   "(5 fields: minute hour day-of-month month day-of-week, UTC)")
    return expression


def check_config(kind: str, config: dict[str, Any], settings: Settings, tenant_id: UUID) -> dict[str, Any]:
    """A folder source is checked against the tenant's own folder (`<root>/<tenant id>`)."""
    try:
        validate_config(kind, config, policy=NetPolicy(settings.connector_allow_private), tenant_id=tenant_id,
                        folder_roots=FolderRoots.parse(settings.connector_folder_roots, data_dir=settings.data_path))
    except ConfigError as exc:
        raise _invalid(exc.field, exc.message) from None
    return config


def merge_secrets(new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """A PATCHed config that carries a masked secret (as GET shows it) keeps the stored one."""
    merged = dict(new)
    for name in SECRET_FIELDS:
        value = merged.get(name)
        if isinstance(value, str) and value.startswith("****") and name in old:
            merged[name] = old[name]
    return merged


def next_tick(schedule: str | None, after: datetime | None = None) -> datetime | None:
    if schedule is None:
        return None
    base = after or datetime.now(UTC)
    tick: datetime = croniter(schedule, base).get_next(datetime)
    return tick


def source_out(source: Source, last_run: SyncRun | None) -> SourceOut:
    return SourceOut(
        id=source.id, name=source.name, kind=source.kind, collection_id=source.collection_id,
        config=redact_config(source.config), schedule=source.schedule, enabled=source.enabled,
        next_run_at=next_tick(source.schedule) if source.enabled else None,
        created_at=source.created_at, updated_at=source.updated_at, last_run=last_run,
    )
