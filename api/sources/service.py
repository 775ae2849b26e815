"""Validation of sources for the API and CLI: kind config, cron schedule, secrets.

Credentials in a config (S3 `access_key_id`, `secret_access_key`) are sealed before they are
stored (core.secrets: Fernet with QUARRY_SECRET_KEY) and shown masked: the secret as
``********``, the key id as its first 4 and last 3 characters (``AKIA…XYZ``). A PATCH that sends
back the masked form keeps the stored value, without decrypting it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from croniter import croniter

from core.errors import Unprocessable
from core.secrets import is_sealed, secret_box, shown_value
from core.settings import Settings
from rag.connectors import ConfigError, FolderRoots, NetPolicy, validate_config
from rag.connectors.config import SECRET_FIELDS
from storage.repositories.sources import Source
from storage.repositories.sync_runs import SyncRun

from .schemas import SourceOut

__all__ = ["SEALED_FIELDS", "check_config", "check_schedule", "next_tick", "shown_config", "source_out",
           "stored_config"]

SEALED_FIELDS = SECRET_FIELDS | {"access_key_id"}


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


def _masked(name: str, plaintext: str) -> str:
    if name == "access_key_id" and len(plaintext) >= 12:
        return f"{plaintext[:4]}\u2026{plaintext[-3:]}"
    return "********"


def stored_config(
    kind: str, config: dict[str, Any], settings: Settings, tenant_id: UUID, previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The config to store: validated, credentials sealed. With `previous` (a PATCH), a
    credential sent back in its masked form keeps the stored value."""
    merged = dict(config)
    kept: set[str] = set()
    for name in SEALED_FIELDS & merged.keys() & (previous or {}).keys():
        old = (previous or {})[name]
        if isinstance(merged[name], str) and merged[name] == shown_value(old):
            merged[name] = old
            kept.add(name)
    # Validate what the connector will get; a kept sealed value stands in by its masked form.
    check_config(kind, {k: shown_value(v) if k in kept and is_sealed(v) else v for k, v in merged.items()},
                 settings, tenant_id)
    plain = [n for n in SEALED_FIELDS & merged.keys() if isinstance(merged[n], str) and merged[n]]
    if not plain:
        return merged
    box = secret_box(settings)
    if box is None:
        raise _invalid(f"config.{sorted(plain)[-1]}", "this server does not store source credentials: the "
                       "operator must set QUARRY_SECRET_KEY first (docs/syncs.md, Secrets)")
    for name in plain:
        merged[name] = box.seal(merged[name], _masked(name, merged[name]))
    return merged


def shown_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config as readers see it: credentials masked, sealed or not."""
    return {k: shown_value(v) if k in SEALED_FIELDS else v for k, v in config.items()}


def next_tick(schedule: str | None, after: datetime | None = None) -> datetime | None:
    if schedule is None:
        return None
    base = after or datetime.now(UTC)
    tick: datetime = croniter(schedule, base).get_next(datetime)
    return tick


def source_out(source: Source, last_run: SyncRun | None) -> SourceOut:
    return SourceOut(
        id=source.id, name=source.name, kind=source.kind, collection_id=source.collection_id,
        config=shown_config(source.config), schedule=source.schedule, enabled=source.enabled,
        next_run_at=next_tick(source.schedule) if source.enabled else None,
        created_at=source.created_at, updated_at=source.updated_at, last_run=last_run,
    )
