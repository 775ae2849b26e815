"""Data sources: create / list / get / update / enable / disable / delete, run now, run history.

Runs are executed by Dagster: "run now" queues a `sync_runs` row that the Dagster sensor
turns into a run of the source's partition within seconds (see docs/syncs.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.status_codes import HTTP_202_ACCEPTED

from api import paths
from api.auth import require_role
from api.deps import AppSettings, DbPool, ReadPool
from api.pagination import decode_cursor, encode_cursor
from core.errors import BadRequest, Conflict, NotFound
from storage.models import Principal
from storage.repositories import sources, sync_runs
from storage.tenancy import tenant_tx

from .schemas import CreateSource, SourceOut, SourcePage, SyncRequested, SyncRunPage, UpdateSource
from .service import check_schedule, source_out, stored_config

AnyRequest = Request[Principal, UUID, State]
Limit = Annotated[int, QueryParameter(ge=1, le=200, description="page size")]
Cursor = Annotated[str | None, QueryParameter(description="next_cursor of the previous page")]


class SourceController(Controller):
    tags = ["sources"]

    @post(paths.SOURCES, operation_id="createSource", guards=[require_role("admin")])
    async def create_source(
        self, data: JSONBody[CreateSource], request: AnyRequest, pool: DbPool, settings: AppSettings
    ) -> SourceOut:
        """Create a data source (folder, website or S3) syncing into a collection."""
        schedule = check_schedule(data.schedule)
        tenant_id = request.user.tenant_id
        config = stored_config(data.kind, data.config, settings, tenant_id)
        async with tenant_tx(pool, tenant_id) as conn:
            source = await sources.create_source(
                conn, tenant_id=tenant_id, collection_id=data.collection_id, name=data.name, kind=data.kind,
                config=config, schedule=schedule, enabled=data.enabled,
            )
        return source_out(source, None)

    @get(paths.SOURCES, operation_id="listSources")
    async def list_sources(
        self, request: AnyRequest, read_pool: ReadPool, limit: Limit = 50, cursor: Cursor = None,
        collection_id: Annotated[UUID | None, QueryParameter(description="only this collection's")] = None,
    ) -> SourcePage:
        """List sources by name, each with its latest run."""
        after = _name_cursor(cursor) if cursor else None
        async with tenant_tx(read_pool, request.user.tenant_id, readonly=True) as conn:
            items = await sources.list_sources(conn, collection_id=collection_id, after=after, limit=limit + 1)
            more = len(items) > limit
            items = items[:limit]
            latest = await sync_runs.latest_runs(conn, [s.id for s in items])
        return SourcePage(items=[source_out(s, latest.get(s.id)) for s in items],
                          next_cursor=encode_cursor([items[-1].name]) if more else None)

    @get(paths.SOURCE, operation_id="getSource")
    async def get_source(self, source_id: FromPath[UUID], request: AnyRequest, pool: DbPool) -> SourceOut:
        """One source with its latest run."""
        async with tenant_tx(pool, request.user.tenant_id, readonly=True) as conn:
            source = await sources.get_source(conn, source_id)
            latest = await sync_runs.latest_runs(conn, [source_id])
        return source_out(source, latest.get(source_id))

    @patch(paths.SOURCE, operation_id="updateSource", guards=[require_role("admin")])
    async def update_source(
        self, source_id: FromPath[UUID], data: JSONBody[UpdateSource], request: AnyRequest, pool: DbPool,
        settings: AppSettings,
    ) -> SourceOut:
        """Change a source's name, collection, config, schedule or enabled flag."""
        changes: dict[str, Any] = {
            name: getattr(data, name) for name in ("name", "collection_id", "schedule", "enabled")
            if getattr(data, name) is not msgspec.UNSET
        }
        if "schedule" in changes:
            changes["schedule"] = check_schedule(changes["schedule"])
        async with tenant_tx(pool, request.user.tenant_id) as conn:
            current = await sources.get_source(conn, source_id, for_update=True)
            if isinstance(data.config, dict):
                changes["config"] = stored_config(current.kind, data.config, settings, request.user.tenant_id,
                                                  current.config)
            source = await sources.update_source(conn, source_id, changes)
            latest = await sync_runs.latest_runs(conn, [source_id])
        return source_out(source, latest.get(source_id))

    @post(paths.SOURCE_ENABLE, operation_id="enableSource", guards=[require_role("admin")], status_code=200)
    async def enable_source(self, source_id: FromPath[UUID], request: AnyRequest, pool: DbPool) -> SourceOut:
        """Resume scheduled syncs of a source."""
        return await _set_enabled(pool, request.user.tenant_id, source_id, True)

    @post(paths.SOURCE_DISABLE, operation_id="disableSource", guards=[require_role("admin")], status_code=200)
    async def disable_source(self, source_id: FromPath[UUID], request: AnyRequest, pool: DbPool) -> SourceOut:
        """Pause scheduled syncs of a source (its documents stay searchable)."""
        return await _set_enabled(pool, request.user.tenant_id, source_id, False)

    @delete(paths.SOURCE, operation_id="deleteSource", guards=[require_role("admin")])
    async def delete_source(
        self, source_id: FromPath[UUID], request: AnyRequest, pool: DbPool,
        keep_documents: Annotated[bool, QueryParameter(description="keep its documents in the collection")] = False,
    ) -> None:
        """Delete a source and (unless keep_documents) the documents it synced."""
        async with tenant_tx(pool, request.user.tenant_id) as conn:
            await sources.delete_source(conn, source_id, delete_documents=not keep_documents)

    @post(paths.SOURCE_SYNC, operation_id="syncSource", guards=[require_role("member")],
          status_code=HTTP_202_ACCEPTED)
    async def sync_source(self, source_id: FromPath[UUID], request: AnyRequest, pool: DbPool) -> SyncRequested:
        """Run a sync now: queued at once, started by Dagster within seconds."""
        tenant_id = request.user.tenant_id
        async with tenant_tx(pool, tenant_id) as conn:
            source = await sources.get_source(conn, source_id)
            if not source.enabled:
                raise Conflict("the source is disabled; enable it first")
            run, created = await sync_runs.request_run(conn, tenant_id, source_id, "api")
        return SyncRequested(run=run, created=created)

    @get(paths.SOURCE_RUNS, operation_id="listSourceRuns")
    async def list_runs(
        self, source_id: FromPath[UUID], request: AnyRequest, read_pool: ReadPool, limit: Limit = 20,
        cursor: Cursor = None,
    ) -> SyncRunPage:
        """Sync runs of a source, newest first: status, counts, errors, duration."""
        before = _run_cursor(cursor) if cursor else None
        async with tenant_tx(read_pool, request.user.tenant_id, readonly=True) as conn:
            await sources.get_source(conn, source_id)
            items = await sync_runs.list_runs(conn, source_id, before=before, limit=limit + 1)
        more = len(items) > limit
        items = items[:limit]
        next_cursor = encode_cursor([items[-1].queued_at.isoformat(), str(items[-1].id)]) if more else None
        return SyncRunPage(items=items, next_cursor=next_cursor)

    @get(paths.SOURCE_RUN, operation_id="getSourceRun")
    async def get_run(
        self, source_id: FromPath[UUID], run_id: FromPath[UUID], request: AnyRequest, pool: DbPool
    ) -> sync_runs.SyncRun:
        """One sync run."""
        async with tenant_tx(pool, request.user.tenant_id, readonly=True) as conn:
            run = await sync_runs.get_run(conn, run_id)
        if run.source_id != source_id:
            raise NotFound("no such sync run")
        return run


async def _set_enabled(pool: Any, tenant_id: UUID, source_id: UUID, enabled: bool) -> SourceOut:
    async with tenant_tx(pool, tenant_id) as conn:
        source = await sources.update_source(conn, source_id, {"enabled": enabled})
        latest = await sync_runs.latest_runs(conn, [source_id])
    return source_out(source, latest.get(source_id))


def _name_cursor(cursor: str) -> str:
    values = decode_cursor(cursor)
    if len(values) != 1 or not isinstance(values[0], str):
        raise BadRequest("invalid cursor")
    return values[0]


def _run_cursor(cursor: str) -> tuple[datetime, UUID]:
    values = decode_cursor(cursor)
    try:
        return datetime.fromisoformat(values[0]), UUID(values[1])
    except (ValueError, IndexError, TypeError):
        raise BadRequest("invalid cursor") from None
