"""The storage quota of a tenant: what applies (settings defaults ← operator overrides) and its
check, decided in the transaction that registers an upload's documents.

`QuotaCheck` is used around the registration: `start` takes the tenant's quota lock and counts
the usage before, `finish` counts it after (a replaced document counts its new size once) and
refuses a batch that grew the usage past the quota: 413 for bytes, 409 for the document count.
A batch that does not grow the usage (re-uploading unchanged files, a smaller replacement) is
never refused, even when an operator has lowered the quota below the current usage.
`GET /v1/me/storage` shows a tenant its quota and usage.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from litestar import Controller, Request, get
from litestar.datastructures import State

from api import paths
from api.deps import DbPool
from core.errors import Conflict, PayloadTooLarge
from core.settings import Settings
from storage.models import Principal
from storage.repositories import quotas
from storage.repositories.quotas import StorageUsage
from storage.tenancy import tenant_tx

__all__ = ["ME_STORAGE", "QuotaCheck", "StorageQuota", "StorageUsageController", "effective_quota"]

ME_STORAGE = f"{paths.ME}/storage"


class StorageQuota(msgspec.Struct, frozen=True):
    storage_bytes: int
    """Bytes of documents the tenant may keep (0 = unlimited)."""
    documents: int
    """Documents the tenant may keep (0 = unlimited)."""

    @property
    def unlimited(self) -> bool:
        return not self.storage_bytes and not self.documents


def effective_quota(settings: Settings, overrides: dict[str, Any]) -> StorageQuota:
    def pick(name: str, default: int) -> int:
        value = overrides.get(name)
        return value if isinstance(value, int) and value >= 0 else default

    return StorageQuota(storage_bytes=pick("storage_bytes", settings.tenant_max_storage_bytes),
                        documents=pick("documents", settings.tenant_max_documents))


class QuotaCheck:
    def __init__(self, settings: Settings, tenant_id: UUID) -> None:
        self.settings = settings
        self.tenant_id = tenant_id
        self.quota: StorageQuota | None = None
        self.before: StorageUsage | None = None

    async def start(self, conn: asyncpg.Connection) -> None:
        self.quota = effective_quota(self.settings, await quotas.lock_usage(conn, self.tenant_id))
        if not self.quota.unlimited:
            self.before = await quotas.usage(conn, self.tenant_id)

    async def finish(self, conn: asyncpg.Connection) -> None:
        if self.quota is None or self.before is None:
            return
        quota, before = self.quota, self.before
        after = await quotas.usage(conn, self.tenant_id)
        if quota.storage_bytes and after.storage_bytes > max(quota.storage_bytes, before.storage_bytes):
            raise PayloadTooLarge(
                f"this upload needs {after.storage_bytes - before.storage_bytes} more bytes of storage; the "
                f"tenant uses {before.storage_bytes} of its quota of {quota.storage_bytes} bytes "
                "(delete documents or ask the operator for a larger quota)",
                quota_bytes=quota.storage_bytes, usage_bytes=before.storage_bytes,
                requested_bytes=after.storage_bytes - before.storage_bytes,
            )
        if quota.documents and after.documents > max(quota.documents, before.documents):
            raise Conflict(
                f"this upload adds {after.documents - before.documents} documents; the tenant keeps "
                f"{before.documents} of its quota of {quota.documents} documents "
                "(delete documents or ask the operator for a larger quota)",
                quota_documents=quota.documents, usage_documents=before.documents,
                requested_documents=after.documents - before.documents,
            )


class TenantStorage(msgspec.Struct):
    quota: StorageQuota
    """The storage quota in effect (0 = unlimited)."""
    usage: StorageUsage
    """What the tenant keeps now."""


class StorageUsageController(Controller):
    tags = ["auth"]

    @get(ME_STORAGE, operation_id="myStorage")
    async def storage(self, request: Request[Principal, UUID, State], pool: DbPool) -> TenantStorage:
        """The calling tenant's storage quota and usage (any role): documents and bytes."""
        tenant_id = request.user.tenant_id
        async with tenant_tx(pool, tenant_id, readonly=True) as conn:
            overrides = await quotas.quota_overrides(conn, tenant_id)
            usage = await quotas.usage(conn, tenant_id)
        return TenantStorage(quota=effective_quota(request.app.state.settings, overrides), usage=usage)
