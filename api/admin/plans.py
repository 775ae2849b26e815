"""Plans and per-tenant rate limits (operator admins only).

A plan is a named set of limits per route class; a tenant follows one plan (``default``
unless set) and may carry overrides of its own. What applies is settings defaults ← plan ←
tenant overrides, field by field; 0 means unlimited. Changes reach every API process within
the principal-cache local TTL (they are invalidated through Redis pub/sub at once when it is up).

The same tenant endpoint sets the tenant's storage quota (documents and bytes: settings defaults
← the tenant's `quota`) and shows its usage; a quota change applies to the next upload.
Writes go through the owner role's `operator_pool`: the app role cannot change plans or tenants.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, delete, get, put
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody

from api import paths
from api.auth import require_operator
from api.deps import DbPool
from api.documents.quota import StorageQuota, effective_quota
from api.limits.classes import RateClass
from api.limits.policy import LimitsPolicy
from core.errors import NotFound, Unprocessable
from storage.models import Principal
from storage.repositories import plans, quotas, tenants
from storage.repositories.plans import Plan
from storage.repositories.quotas import StorageUsage
from storage.tenancy import tenant_tx

__all__ = ["PlanAdminController"]

ADMIN_PLANS = f"{paths.ADMIN}/plans"
ADMIN_PLAN = f"{ADMIN_PLANS}/{{plan_name:str}}"
ADMIN_TENANT_LIMITS = f"{paths.ADMIN_TENANTS}/{{tenant_name:str}}/limits"

AnyRequest = Request[Principal, UUID, State]
PerMinute = Annotated[int, msgspec.Meta(ge=0, le=10_000_000)]
PlanName = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
QuotaValue = Annotated[int, msgspec.Meta(ge=0, le=2**62)]


class ClassLimitBody(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    key: PerMinute | None = None
    """Requests per minute per API key (0 = unlimited; absent = inherit)."""
    tenant: PerMinute | None = None
    """Requests per minute for the whole tenant (0 = unlimited; absent = inherit)."""


LimitsBody = dict[RateClass, ClassLimitBody]


class PutPlan(msgspec.Struct, forbid_unknown_fields=True):
    limits: LimitsBody


class QuotaBody(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    storage_bytes: QuotaValue | None = None
    """Bytes of documents the tenant may keep (0 = unlimited; absent = the settings' default)."""
    documents: QuotaValue | None = None
    """Documents the tenant may keep (0 = unlimited; absent = the settings' default)."""


class PutTenantLimits(msgspec.Struct, forbid_unknown_fields=True):
    plan: PlanName | None = None
    """The plan to follow (`default` = the settings' defaults, or a plan created here)."""
    limits: LimitsBody | None = None
    """Overrides of this tenant (replace the previous ones; `{}` clears them)."""
    quota: QuotaBody | None = None
    """This tenant's storage quota (replaces the previous one; `{}` = the settings' defaults)."""


class EffectiveLimit(msgspec.Struct):
    key: int
    tenant: int


class TenantLimits(msgspec.Struct):
    tenant: str
    plan: str
    overrides: dict[str, Any]
    effective: dict[str, EffectiveLimit]
    """What applies now, per route class (requests per minute; 0 = unlimited)."""
    quota: StorageQuota
    """The storage quota in effect (0 = unlimited)."""
    quota_overrides: dict[str, Any]
    usage: StorageUsage
    """What the tenant keeps now."""


class PlanList(msgspec.Struct):
    items: list[Plan]


def _policy(request: AnyRequest) -> LimitsPolicy:
    return request.app.state.serving.policy  # type: ignore[no-any-return]


class PlanAdminController(Controller):
    tags = ["admin"]
    guards = [require_operator]

    @get(ADMIN_PLANS, operation_id="listPlans")
    async def list_plans(self, pool: DbPool) -> PlanList:
        """Rate-limit plans."""
        async with pool.acquire() as conn:
            return PlanList(items=await plans.list_plans(conn))

    @put(ADMIN_PLAN, operation_id="putPlan")
    async def put_plan(self, plan_name: FromPath[str], data: JSONBody[PutPlan], request: AnyRequest,
                       operator_pool: DbPool) -> Plan:
        """Create or replace a plan's limits; tenants on it get them within seconds."""
        _check_name(plan_name)
        async with operator_pool.acquire() as conn:
            plan = await plans.put_plan(conn, plan_name, msgspec.to_builtins(data.limits))
        await _policy(request).plan_changed(plan_name)
        return plan

    @delete(ADMIN_PLAN, operation_id="deletePlan")
    async def delete_plan(self, plan_name: FromPath[str], request: AnyRequest, operator_pool: DbPool) -> None:
        """Delete a plan; tenants still naming it fall back to the settings' defaults."""
        async with operator_pool.acquire() as conn:
            await plans.delete_plan(conn, plan_name)
        await _policy(request).plan_changed(plan_name)

    @get(ADMIN_TENANT_LIMITS, operation_id="getTenantLimits")
    async def get_limits(self, tenant_name: FromPath[str], request: AnyRequest,
                         operator_pool: DbPool) -> TenantLimits:
        """A tenant's plan, overrides and the limits in effect."""
        return await _describe(request, operator_pool, tenant_name)

    @put(ADMIN_TENANT_LIMITS, operation_id="putTenantLimits")
    async def put_limits(self, tenant_name: FromPath[str], data: JSONBody[PutTenantLimits], request: AnyRequest,
                         operator_pool: DbPool) -> TenantLimits:
        """Set a tenant's plan and/or its own overrides."""
        async with operator_pool.acquire() as conn, conn.transaction():
            if data.plan is not None and data.plan != "default" and await plans.get_plan(conn, data.plan) is None:
                raise Unprocessable(f"no plan named {data.plan!r}; create it with PUT {ADMIN_PLANS}/{data.plan}")
            limits = msgspec.to_builtins(data.limits) if data.limits is not None else None
            tenant = await plans.set_tenant_limits(conn, tenant_name, data.plan, limits)
            if data.quota is not None:
                await quotas.set_tenant_quota(conn, tenant_name, msgspec.to_builtins(data.quota))
        await _policy(request).tenant_changed(tenant.id)
        return await _describe(request, operator_pool, tenant_name)


def _check_name(name: str) -> None:
    try:
        msgspec.convert(name, PlanName)
    except msgspec.ValidationError:
        raise Unprocessable("plan name must be 1-63 characters of a-z, 0-9, '_' or '-'") from None


async def _describe(request: AnyRequest, pool: DbPool, tenant_name: str) -> TenantLimits:
    async with pool.acquire() as conn:
        tenant = await tenants.get_tenant_by_name(conn, tenant_name)
        row = await plans.tenant_limits(conn, tenant.id) if tenant else None
    if tenant is None or row is None:
        raise NotFound(f"no tenant named {tenant_name!r}")
    effective = await _policy(request).effective(tenant.id)
    async with tenant_tx(pool, tenant.id, readonly=True) as conn:
        overrides = await quotas.quota_overrides(conn, tenant.id)
        usage = await quotas.usage(conn, tenant.id)
    return TenantLimits(tenant=tenant.name, plan=row.plan, overrides=row.tenant_limits,
                        effective={c: EffectiveLimit(v.key, v.tenant) for c, v in effective.items()},
                        quota=effective_quota(request.app.state.settings, overrides),
                        quota_overrides=overrides, usage=usage)
