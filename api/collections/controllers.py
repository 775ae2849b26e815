"""Collections: create / list / get / rename / delete (tenant-scoped)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from litestar import Controller, Request, delete, get, patch, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody, QueryParameter

from api import paths
from api.auth import require_role
from api.collections.schemas import CollectionPage, CreateCollection, UpdateCollection
from api.deps import DbPool, ReadPool
from api.pagination import decode_cursor, encode_cursor
from core.errors import BadRequest
from storage.models import Collection, Principal
from storage.repositories import collections
from storage.tenancy import tenant_tx

AnyRequest = Request[Principal, UUID, State]
Limit = Annotated[int, QueryParameter(ge=1, le=200, description="page size")]
Cursor = Annotated[str | None, QueryParameter(description="next_cursor of the previous page")]


class CollectionController(Controller):
    tags = ["collections"]

    @post(paths.COLLECTIONS, operation_id="createCollection", guards=[require_role("member")])
    async def create_collection(
        self, data: JSONBody[CreateCollection], request: AnyRequest, pool: DbPool
    ) -> Collection:
        """Create a collection."""
        tenant_id = request.user.tenant_id
        async with tenant_tx(pool, tenant_id) as conn:
            return await collections.create_collection(conn, tenant_id, data.name, data.description)

    @get(paths.COLLECTIONS, operation_id="listCollections")
    async def list_collections(
        self, request: AnyRequest, read_pool: ReadPool, limit: Limit = 50, cursor: Cursor = None
    ) -> CollectionPage:
        """List collections by name (keyset pagination)."""
        after = _decode_name_cursor(cursor) if cursor else None
        async with tenant_tx(read_pool, request.user.tenant_id, readonly=True) as conn:
            items = await collections.list_collections(conn, after, limit + 1)
        more = len(items) > limit
        items = items[:limit]
        return CollectionPage(items=items, next_cursor=encode_cursor([items[-1].name]) if more else None)

    @get(paths.COLLECTION, operation_id="getCollection")
    async def get_collection(self, collection_id: FromPath[UUID], request: AnyRequest, pool: DbPool) -> Collection:
        """One collection."""
        async with tenant_tx(pool, request.user.tenant_id, readonly=True) as conn:
            return await collections.get_collection(conn, collection_id)

    @patch(paths.COLLECTION, operation_id="updateCollection", guards=[require_role("member")])
    async def update_collection(
        self, collection_id: FromPath[UUID], data: JSONBody[UpdateCollection], request: AnyRequest, pool: DbPool
    ) -> Collection:
        """Rename a collection or change its description."""
        name = data.name if isinstance(data.name, str) else None
        description = data.description if isinstance(data.description, str) else None
        async with tenant_tx(pool, request.user.tenant_id) as conn:
            return await collections.update_collection(conn, collection_id, name, description)

    @delete(paths.COLLECTION, operation_id="deleteCollection", guards=[require_role("admin")])
    async def delete_collection(self, collection_id: FromPath[UUID], request: AnyRequest, pool: DbPool) -> None:
        """Delete a collection with its documents, chunks and embeddings."""
        async with tenant_tx(pool, request.user.tenant_id) as conn:
            await collections.delete_collection(conn, collection_id)


def _decode_name_cursor(cursor: str) -> str:
    values = decode_cursor(cursor)
    if len(values) != 1 or not isinstance(values[0], str):
        raise BadRequest("invalid cursor")
    return values[0]
