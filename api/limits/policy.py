"""Which limits apply to a tenant: settings defaults ← its plan ← its own overrides.

Limits are requests per minute per API key (`key`) and per tenant (`tenant`) for each route
class; 0 means unlimited. The tenant's plan name and overrides, and each plan's limits, are
cached in two tiers (storage.caches.tiered) and invalidated through the bus when an
operator changes them, so a new limit applies within the local TTL everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from api.limits.classes import RATE_CLASSES
from storage.caches.bus import InvalidationBus
from storage.caches.guard import RedisGuard
from storage.caches.tiered import TieredCache
from storage.pooling import run_read
from storage.repositories import plans
from storage.repositories.plans import TenantLimitsRow

__all__ = ["ClassLimit", "LimitsPolicy", "merge_limits", "parse_defaults"]


@dataclass(frozen=True, slots=True)
class ClassLimit:
    key: int  # per API key per minute; 0 = unlimited
    tenant: int  # per tenant per minute; 0 = unlimited


class _PlanLimits(msgspec.Struct, frozen=True):
    limits: dict[str, Any]


def parse_defaults(spec: str) -> dict[str, ClassLimit]:
    """`search=600/3000,chat=60/300` → {"search": ClassLimit(600, 3000), ...}; classes not
    named are unlimited."""
    limits: dict[str, ClassLimit] = {c: ClassLimit(0, 0) for c in RATE_CLASSES}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, values = part.partition("=")
        per_key, _, per_tenant = values.partition("/")
        limits[name.strip()] = ClassLimit(int(per_key), int(per_tenant))
    return limits


def merge_limits(base: ClassLimit, *layers: dict[str, Any] | None) -> ClassLimit:
    """Apply each layer's `{"key": n, "tenant": n}` (missing or null fields inherit)."""
    key, tenant = base.key, base.tenant
    for layer in layers:
        if not layer:
            continue
        if isinstance(layer.get("key"), int):
            key = layer["key"]
        if isinstance(layer.get("tenant"), int):
            tenant = layer["tenant"]
    return ClassLimit(key, tenant)


class LimitsPolicy:
    def __init__(self, pool: asyncpg.Pool, guard: RedisGuard, bus: InvalidationBus, defaults: dict[str, ClassLimit],
                 *, local_ttl_s: float, redis_ttl_s: float) -> None:
        self.pool = pool
        self.bus = bus
        self.defaults = defaults
        self.tenants: TieredCache[TenantLimitsRow] = TieredCache(
            "tenant_limits", guard, TenantLimitsRow, local_ttl_s=local_ttl_s, redis_ttl_s=redis_ttl_s)
        self.plans: TieredCache[_PlanLimits] = TieredCache(
            "plan_limits", guard, _PlanLimits, local_ttl_s=local_ttl_s, redis_ttl_s=redis_ttl_s)
        bus.on("tenant_limits", self.tenants.local.pop)
        bus.on("plan_limits", self.plans.local.pop)
        bus.on_reconnect(self.tenants.local.clear)
        bus.on_reconnect(self.plans.local.clear)

    async def limit_for(self, tenant_id: UUID, rate_class: str) -> ClassLimit:
        tenant = await self.tenants.get(str(tenant_id), lambda: self._load_tenant(tenant_id))
        plan_name = tenant.plan if tenant else "default"
        plan = await self.plans.get(plan_name, lambda: self._load_plan(plan_name))
        base = self.defaults.get(rate_class, ClassLimit(0, 0))
        return merge_limits(base, plan.limits.get(rate_class) if plan else None,
                            tenant.tenant_limits.get(rate_class) if tenant else None)

    async def effective(self, tenant_id: UUID) -> dict[str, ClassLimit]:
        return {c: await self.limit_for(tenant_id, c) for c in RATE_CLASSES}

    async def _load_tenant(self, tenant_id: UUID) -> tuple[TenantLimitsRow | None, None]:
        return await run_read(self.pool, lambda conn: plans.tenant_limits(conn, tenant_id)), None

    async def _load_plan(self, name: str) -> tuple[_PlanLimits, None]:
        plan = await run_read(self.pool, lambda conn: plans.get_plan(conn, name))
        return _PlanLimits(plan.limits if plan else {}), None

    async def tenant_changed(self, tenant_id: UUID) -> None:
        await self.tenants.delete(str(tenant_id))
        await self.bus.publish("tenant_limits", str(tenant_id))

    async def plan_changed(self, name: str) -> None:
        await self.plans.delete(name)
        await self.bus.publish("plan_limits", name)
