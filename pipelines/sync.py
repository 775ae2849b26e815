"""The incremental sync engine, framework-free: Dagster assets, the CLI and tests call
`sync_source` the same way.

One run of one source: take the source's advisory lock (two runs never overlap; a killed
run's lock dies with its connection), claim a `sync_runs` row, scan the source with the
cursors of what is indexed, and per item:

- unchanged upstream version (mtime+size, ETag, 304)  -> skipped, nothing fetched
- new bytes with the hash already indexed             -> skipped, cursor refreshed
- new or changed content -> parse, chunk, embed (outside any transaction), then document
  row + chunks + embeddings + full-text swapped in ONE transaction (a kill at any point
  leaves the previous version whole, and a rerun picks up where it stopped)
- gone upstream (404/410, or absent from a complete listing) -> deleted with its chunks
- any error -> this item fails alone (counted, reason recorded, previous version kept)

Counts are written to the run as it goes; the run ends succeeded (item failures
included: see its `failed` count), failed (the source could not be scanned) or canceled.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg

from core.errors import Conflict, QuarryError
from core.secrets import SecretError, open_config, secret_box
from core.settings import Settings
from rag.chunking import TokenOffsets
from rag.connectors import (
    ConfigError,
    ConnectorError,
    Fetched,
    FolderRoots,
    Gone,
    ItemFailed,
    NetPolicy,
    make_connector,
)
from rag.embedders import Embedder, tokenizer_path
from rag.ingest import prepare_file
from rag.parse_pool import ParsePool
from rag.parsing import FORMATS, detect_format
from storage.models import ChunkRow
from storage.repositories import chunks as chunk_repo
from storage.repositories import collections, source_documents, sources, sync_runs
from storage.repositories.sync_runs import Counts, SyncRun, Trigger
from storage.tenancy import tenant_tx

from .embedding import EmbedderResolver, UnknownEmbedder

__all__ = ["SyncBusy", "SyncDeps", "SyncReport", "folder_roots", "lock_holder_name", "net_policy", "sync_parser",
           "sync_source"]

_log = logging.getLogger("quarry.pipelines.sync")
PROGRESS_EVERY_S = 1.0


class SyncBusy(Conflict):
    """Another run of the source holds its lock (or the queued run was already taken)."""


@dataclass
class SyncDeps:
    pool: asyncpg.Pool  # the application role: row-level security applies
    settings: Settings
    tokenizer: TokenOffsets
    parser: ParsePool  # connector items are parsed and chunked in killable processes, like uploads
    embedders: EmbedderResolver
    scratch_dir: Path


@dataclass
class SyncReport:
    run: SyncRun
    embedder: str
    notes: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)


def lock_holder_name(dagster_run_id: str | None) -> str:
    """application_name of the connection holding a source's lock (at most 63 characters)."""
    return f"quarry-sync {dagster_run_id or 'inline'}"[:63]


@asynccontextmanager
async def sync_parser(settings: Settings) -> AsyncIterator[ParsePool]:
    """The parsing process of one sync run (its items are prepared one at a time), bounded in time
    and memory by the same settings as the ingestion worker's (QUARRY_PARSE_*)."""
    parser = ParsePool(tokenizer_path(), workers=1, timeout_s=settings.parse_timeout_s,
                       max_memory_mb=settings.parse_max_memory_mb)
    await parser.start()
    try:
        yield parser
    finally:
        await asyncio.to_thread(parser.close)


def net_policy(settings: Settings) -> NetPolicy:
    return NetPolicy(settings.connector_allow_private)


def folder_roots(settings: Settings) -> FolderRoots:
    return FolderRoots.parse(settings.connector_folder_roots, data_dir=settings.data_path)


async def sync_source(
    deps: SyncDeps, tenant_id: UUID, source_id: UUID, *, run_id: UUID | None = None, trigger: Trigger = "manual",
    dagster_run_id: str | None = None, on_item: Callable[[str, str], None] | None = None,
) -> SyncReport:
    """Run one sync of the source. `run_id` claims that queued run (else a new run row is
    made). SyncBusy when another run holds the source."""
    async with deps.pool.acquire() as lock_conn:
        key = sources.lock_key(source_id)
        # Names the lock holder, so the sensor can end the connection of a run Dagster gave up
        # on while its process lives on (a session setting: the pool resets it on release).
        await lock_conn.execute("SELECT set_config('application_name', $1, false)", lock_holder_name(dagster_run_id))
        if not await lock_conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", key):
            if run_id is not None:
                async with tenant_tx(deps.pool, tenant_id) as conn:
                    await sync_runs.fail_run(conn, run_id, "another run of this source was in progress",
                                             only_if="queued")
            raise SyncBusy("another run of this source is in progress")
        try:
            return await _Run(deps, tenant_id, source_id, on_item).execute(run_id, trigger, dagster_run_id)
        finally:
            await lock_conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", key)


class _Run:
    def __init__(
        self, deps: SyncDeps, tenant_id: UUID, source_id: UUID, on_item: Callable[[str, str], None] | None
    ) -> None:
        self.deps, self.tenant_id, self.source_id = deps, tenant_id, source_id
        self.counts = Counts()
        self.errors: list[dict[str, Any]] = []
        self.timings = {"fetch": 0.0, "parse": 0.0, "chunk": 0.0, "embed": 0.0, "write": 0.0}
        self.on_item = on_item or (lambda uri, outcome: None)
        self._last_progress = 0.0

    async def execute(self, run_id: UUID | None, trigger: Trigger, dagster_run_id: str | None) -> SyncReport:
        pool = self.deps.pool
        async with tenant_tx(pool, self.tenant_id) as conn:
            source = await sources.get_source(conn, self.source_id)
            run = await sync_runs.claim_run(conn, tenant_id=self.tenant_id, source_id=self.source_id,
                                            run_id=run_id, trigger=trigger, dagster_run_id=dagster_run_id)
            if run is None:
                raise SyncBusy("this run is no longer queued (it ran already or was canceled)")
            collection = await collections.get_collection(conn, source.collection_id)
            known = await source_documents.known_documents(conn, self.source_id)
        self.source, self.collection, self.run, self.known = source, collection, run, known
        status: sync_runs.RunStatus = "failed"
        complete: bool | None = None
        notes: list[str] = []
        embedder_name = collection.active_embedder
        deadline = asyncio.timeout(self.deps.settings.sync_max_runtime_s)
        try:
            async with tenant_tx(pool, self.tenant_id, readonly=True) as conn:
                self.embedder = await self.deps.embedders.get(conn, collection.active_embedder)
            s = self.deps.settings
            connector = make_connector(  # the one place a source's credentials are decrypted
                source.kind, open_config(source.config, secret_box(s)), tenant_id=self.tenant_id,
                policy=net_policy(s), folder_roots=folder_roots(s), max_item_bytes=s.connector_max_item_bytes,
                timeout_s=s.connector_timeout_s, user_agent=s.connector_user_agent,
            )
            cursors = {uri: doc.source_cursor for uri, doc in known.items()
                       if doc.status == "ready" and doc.source_cursor is not None}
            seen: set[str] = set()
            started = time.perf_counter()
            async with deadline:
                async for result in connector.scan(cursors):
                    self.timings["fetch"] += (time.perf_counter() - started) * 1000
                    seen.add(result.uri)
                    await self._handle(result)
                    await self._progress()
                    started = time.perf_counter()
                notes = connector.notes
                complete = connector.complete
                if complete:
                    await self._delete([uri for uri in known if uri not in seen], "gone upstream")
            status = "succeeded"
        except TimeoutError as exc:
            if not deadline.expired():
                await self._internal_error(exc, status, complete)
                raise
            complete = None  # stopped mid-way: nothing is deleted
            self.errors.insert(0, {"error": f"the run took longer than QUARRY_SYNC_MAX_RUNTIME_S "
                                            f"({self.deps.settings.sync_max_runtime_s:g} s) and was stopped; "
                                            "the next run continues where it stopped"})
        except (ConnectorError, ConfigError, UnknownEmbedder, SecretError) as exc:
            self.errors.insert(0, {"error": str(exc)})
        except (asyncio.CancelledError, KeyboardInterrupt):
            status = "canceled"
            self.errors.insert(0, {"error": "the run was canceled"})
            await asyncio.shield(self._finish(status, complete))
            raise
        except Exception as exc:
            await self._internal_error(exc, status, complete)
            raise
        finished = await self._finish(status, complete)
        return SyncReport(run=finished, embedder=embedder_name, notes=notes,
                          timings_ms={k: round(v, 1) for k, v in self.timings.items()})

    async def _internal_error(self, exc: Exception, status: sync_runs.RunStatus, complete: bool | None) -> None:
        _log.exception("sync of source %s failed", self.source_id)
        self.errors.insert(0, {"error": f"internal error: {type(exc).__name__}: {exc}"[:500]})
        await self._finish(status, complete)

    async def _finish(self, status: sync_runs.RunStatus, complete: bool | None) -> SyncRun:
        async with tenant_tx(self.deps.pool, self.tenant_id) as conn:
            total = await source_documents.count_documents(conn, self.source_id)
            finished = await sync_runs.finish_run(conn, self.run.id, status=status, counts=self.counts,
                                                  errors=self.errors, documents_total=total, complete=complete)
            await sources.set_cursor(conn, self.source_id, {
                "last_run_id": str(finished.id), "last_status": status, "documents": total,
                "last_finished_at": finished.finished_at.isoformat() if finished.finished_at else None,
            })
        return finished

    async def _progress(self) -> None:
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_EVERY_S:
            self._last_progress = now
            async with tenant_tx(self.deps.pool, self.tenant_id) as conn:
                await sync_runs.record_progress(conn, self.run.id, self.counts, self.errors)

    def _fail(self, uri: str, error: str) -> None:
        self.counts.failed += 1
        if len(self.errors) < sync_runs.MAX_ERRORS:
            self.errors.append({"uri": uri, "error": error[:500]})
        self.on_item(uri, "failed")

    async def _handle(self, result: Any) -> None:
        if isinstance(result, ItemFailed):
            self._fail(result.uri, result.error)
        elif isinstance(result, Gone):
            await self._delete([result.uri] if result.uri in self.known else [], "gone")
        elif isinstance(result, Fetched):
            try:
                await self._ingest(result)
            except QuarryError as exc:  # parse errors (422) and unsupported formats (415)
                self._fail(result.uri, exc.detail)
            except Exception as exc:
                _log.warning("sync item %s failed: %s: %s", result.uri, type(exc).__name__, exc)
                self._fail(result.uri, f"{type(exc).__name__}: {exc}")
        else:
            self.counts.skipped += 1
            self.on_item(result.uri, "skipped")

    async def _delete(self, uris: list[str], why: str) -> None:
        if not uris:
            return
        async with tenant_tx(self.deps.pool, self.tenant_id) as conn:
            deleted = await source_documents.delete_documents(conn, self.source_id, uris)
        self.counts.deleted += deleted
        for uri in uris:
            self.known.pop(uri, None)
            self.on_item(uri, f"deleted ({why})")

    async def _ingest(self, item: Fetched) -> None:
        content_hash = hashlib.sha256(item.data).hexdigest()
        existing = self.known.get(item.uri)
        if existing is not None and existing.content_hash == content_hash and existing.status == "ready":
            async with tenant_tx(self.deps.pool, self.tenant_id) as conn:
                await source_documents.set_cursor(conn, existing.id, item.cursor)
            self.counts.skipped += 1
            self.on_item(item.uri, "skipped (same content)")
            return
        fmt = detect_format(item.filename, item.content_type, item.data[:8192])
        embedder: Embedder = self.embedder
        prepared = await self._prepare(item.data, fmt, embedder)
        rows = [ChunkRow(ord=c.ord, text=c.text, heading=c.heading, page=c.page, char_start=c.char_start,
                         char_end=c.char_end, token_count=c.token_count) for c in prepared.chunks]
        title = prepared.title or (item.filename or item.uri)
        started = time.perf_counter()
        async with tenant_tx(self.deps.pool, self.tenant_id) as conn:
            # Serialise with an embedding backfill's switch (it locks this row FOR UPDATE): if the
            # active embedder changed since this item was embedded, retry the item next run.
            active = await conn.fetchval(
                "SELECT active_embedder FROM collections WHERE id = $1 FOR NO KEY UPDATE", self.collection.id
            )
            if active != embedder.name:
                raise QuarryError(f"the collection's embedder changed to {active!r} during the sync; "
                                  "the item will be indexed by the next run")
            document_id, created = await source_documents.upsert_document(
                conn, tenant_id=self.tenant_id, collection_id=self.collection.id, source_id=self.source_id,
                uri=item.uri, title=title, mime_type=FORMATS.get(fmt, "application/octet-stream"),
                content_hash=content_hash, size_bytes=len(item.data),
                metadata={"source_id": str(self.source_id), "source": self.source.name, **item.metadata},
                cursor=item.cursor,
            )
            await chunk_repo.replace_chunks(
                conn, document_id=document_id, content_hash=content_hash, chunks=rows,
                embeddings=prepared.embeddings, embedder=embedder.name, title=title, timings=prepared.timings_ms,
            )
        self.timings["write"] += (time.perf_counter() - started) * 1000
        self.counts.chunks_written += len(rows)
        if created:
            self.counts.added += 1
        else:
            self.counts.updated += 1
        self.on_item(item.uri, "added" if created else "updated")

    async def _prepare(self, data: bytes, fmt: str, embedder: Embedder) -> Any:
        path = await asyncio.to_thread(_write_scratch, self.deps.scratch_dir, data)
        try:
            s = self.deps.settings
            prepared = await prepare_file(
                path, fmt, tokenizer=self.deps.tokenizer, embedder=embedder,
                # The embedder's limit counts its special tokens; the chunker's does not.
                max_tokens=min(s.chunk_tokens, embedder.max_tokens - 2), overlap_tokens=s.chunk_overlap_tokens,
                parser=self.deps.parser,
            )
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        for key, value in prepared.timings_ms.items():
            self.timings[key] = self.timings.get(key, 0.0) + value
        return prepared


def _write_scratch(scratch: Path, data: bytes) -> Path:
    """The parsers read files: the item's bytes go to a private temporary file."""
    scratch.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=scratch, prefix="sync-")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return Path(name)
