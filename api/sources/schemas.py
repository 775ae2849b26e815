from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec

from storage.repositories.sync_runs import SyncRun

SourceName = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")]
Cron = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Kind = Literal["folder", "website", "s3"]


class CreateSource(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: SourceName
    kind: Kind
    collection_id: UUID
    config: dict[str, Any]
    schedule: Cron | None = None
    """Cron expression (5 fields, UTC), e.g. "0 * * * *"; null: synced only on demand."""
    enabled: bool = True


class UpdateSource(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: SourceName | msgspec.UnsetType = msgspec.UNSET
    collection_id: UUID | msgspec.UnsetType = msgspec.UNSET
    config: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    """The whole config; a credential sent back masked (as GET shows it) keeps the stored one."""
    schedule: Cron | msgspec.UnsetType | None = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET


class SourceOut(msgspec.Struct, kw_only=True):
    id: UUID
    name: str
    kind: Kind
    collection_id: UUID
    config: dict[str, Any]
    """Credentials are masked: `secret_access_key` as "********", `access_key_id` as "AKIA…XYZ"."""
    schedule: str | None
    enabled: bool
    next_run_at: datetime | None
    """The next cron tick (UTC) when enabled and scheduled."""
    created_at: datetime
    updated_at: datetime
    last_run: SyncRun | None


class SourcePage(msgspec.Struct):
    items: list[SourceOut]
    next_cursor: str | None


class SyncRunPage(msgspec.Struct):
    items: list[SyncRun]
    next_cursor: str | None


class SyncRequested(msgspec.Struct):
    run: SyncRun
    created: bool
    """False when a run of this source was already queued (that one is returned)."""
