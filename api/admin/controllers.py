"""Administration: tenants (operator admins), users and API keys (tenant admins)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from litestar import Controller, Request, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from api import paths
from api.admin.schemas import (
    CreateKey,
    CreateTenant,
    CreateUser,
    KeyList,
    NewKey,
    NewTenant,
    TenantPage,
    UserPage,
)
from api.auth import require_operator, require_role
from api.deps import DbPool
from api.pagination import decode_cursor, encode_cursor
from core.errors import BadRequest, Unprocessable
from storage.models import Principal, User
from storage.repositories import api_keys, tenants, users
from storage.tenancy import enter_tenant, tenant_tx

Limit = Annotated[int, QueryParameter(ge=1, le=200, description="page size")]
Cursor = Annotated[str | None, QueryParameter(description="next_cursor of the previous page")]
AnyRequest = Request[Principal, UUID, State]


class TenantAdminController(Controller):
    """Platform administration, on the owner role's pool: the app role cannot create tenants."""

    tags = ["admin"]
    guards = [require_operator]

    @post(paths.ADMIN_TENANTS, operation_id="createTenant")
    async def create_tenant(self, data: JSONBody[CreateTenant], operator_pool: DbPool) -> NewTenant:
        """Create a tenant and its first admin key (shown once)."""
        async with operator_pool.acquire() as conn, conn.transaction():  # one transaction: never a keyless tenant
            tenant = await tenants.create_tenant(conn, data.name, data.plan)
            await enter_tenant(conn, tenant.id)
            key, record = await api_keys.create_key(conn, tenant.id, "admin", name="initial admin")
        return NewTenant(tenant=tenant, admin_key=NewKey(key=key, api_key=record))

    @get(paths.ADMIN_TENANTS, operation_id="listTenants")
    async def list_tenants(self, operator_pool: DbPool, limit: Limit = 50, cursor: Cursor = None) -> TenantPage:
        """List tenants by name (keyset pagination)."""
        after = None
        if cursor:
            values = decode_cursor(cursor)
            if len(values) != 1 or not isinstance(values[0], str):
                raise BadRequest("invalid cursor")
            after = values[0]
        async with operator_pool.acquire() as conn:
            items = await tenants.list_tenants(conn, after, limit + 1)
        more = len(items) > limit
        items = items[:limit]
        return TenantPage(items=items, next_cursor=encode_cursor([items[-1].name]) if more else None)


class TenantMembersController(Controller):
    tags = ["admin"]
    guards = [require_role("admin")]

    @post(paths.ADMIN_USERS, operation_id="createUser")
    async def create_user(self, data: JSONBody[CreateUser], request: AnyRequest, pool: DbPool) -> User:
        """Add a user to the caller's tenant."""
        tenant_id = request.user.tenant_id
        async with tenant_tx(pool, tenant_id) as conn:
            return await users.create_user(conn, tenant_id, data.email, data.name, data.role)

    @get(paths.ADMIN_USERS, operation_id="listUsers")
    async def list_users(
        self, request: AnyRequest, pool: DbPool, limit: Limit = 50, cursor: Cursor = None
    ) -> UserPage:
        """List the users of the caller's tenant (keyset pagination)."""
        after = None
        if cursor:
            values = decode_cursor(cursor)
            try:
                after = (datetime.fromisoformat(values[0]), UUID(values[1]))
            except (ValueError, IndexError, TypeError):
                after = None
            if after is None:
                raise BadRequest("invalid cursor")
        async with tenant_tx(pool, request.user.tenant_id, readonly=True) as conn:
            items = await users.list_users(conn, after, limit + 1)
        more = len(items) > limit
        items = items[:limit]
        next_cursor = encode_cursor([items[-1].created_at.isoformat(), str(items[-1].id)]) if more else None
        return UserPage(items=items, next_cursor=next_cursor)

    @post(paths.ADMIN_KEYS, operation_id="createKey")
    async def create_key(self, data: JSONBody[CreateKey], request: AnyRequest, pool: DbPool) -> NewKey:
        """Create an API key in the caller's tenant; the key is shown once."""
        tenant_id = request.user.tenant_id
        user_id = None
        if isinstance(data.user_id, str):
            try:
                user_id = UUID(data.user_id)
            except ValueError:
                raise Unprocessable("user_id is not a UUID") from None
        async with tenant_tx(pool, tenant_id) as conn:
            if user_id is not None and await users.get_user(conn, user_id) is None:
                raise Unprocessable("user_id does not name a user of this tenant")
            key, record = await api_keys.create_key(conn, tenant_id, data.role, data.name, user_id)
        return NewKey(key=key, api_key=record)

    @get(paths.ADMIN_KEYS, operation_id="listKeys")
    async def list_keys(
        self, request: AnyRequest, pool: DbPool, include_revoked: FromQuery[bool] = False
    ) -> KeyList:
        """List the caller's tenant's keys (prefixes only, never secrets)."""
        async with tenant_tx(pool, request.user.tenant_id, readonly=True) as conn:
            return KeyList(items=await api_keys.list_keys(conn, include_revoked))

    @delete(paths.ADMIN_KEY, operation_id="revokeKey")
    async def revoke_key(self, key_id: FromPath[UUID], request: AnyRequest, pool: DbPool) -> None:
        """Revoke a key of the caller's tenant; it stops working at once."""
        async with tenant_tx(pool, request.user.tenant_id) as conn:
            await api_keys.revoke_key(conn, key_id)
        principals = getattr(request.app.state, "principals", None)
        if principals is not None:  # drop cached copies in Redis and in every API process
            await principals.invalidate(key_id)
