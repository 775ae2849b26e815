"""`quarry sources ...` and `quarry backfill`: the same operations as the API, for ops.

Tenant data goes through the application role and `tenant_tx` (row-level security applies);
sources are named by name or id. Output is JSON (secrets masked), one document per command.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from api.sources.service import SEALED_FIELDS, check_schedule, source_out, stored_config
from core.errors import NotFound
from core.secrets import SecretError, is_sealed, secret_box, shown_value
from core.settings import Settings
from storage.db import create_pool
from storage.repositories import sources, sync_runs
from storage.tenancy import tenant_tx
from storage.urls import with_credentials

__all__ = ["add_parsers", "run"]


def add_parsers(sub: Any) -> None:
    parser = sub.add_parser("sources", help="manage data sources and their syncs")
    actions = parser.add_subparsers(dest="action", required=True)

    def command(name: str, help_text: str, *, source: bool = True) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
        p.add_argument("--tenant", required=True, help="tenant name")
        if source:
            p.add_argument("source", help="source name or id")
        return p

    command("list", "list sources", source=False)
    create = command("create", "create a source", source=False)
    create.add_argument("--name", required=True)
    create.add_argument("--kind", required=True, choices=["folder", "website", "s3"])
    create.add_argument("--collection", required=True, help="collection name or id")
    create.add_argument("--config", required=True, help="JSON object, e.g. '{\"path\": \"/srv/docs\"}'")
    create.add_argument("--schedule", help="cron expression (UTC)")
    create.add_argument("--disabled", action="store_true")
    update = command("update", "change a source's config, schedule or name")
    update.add_argument("--name")
    update.add_argument("--config", help="JSON object (the whole config)")
    update.add_argument("--schedule", help="cron expression (UTC); 'none' removes it")
    command("enable", "resume scheduled syncs")
    command("disable", "pause scheduled syncs")
    delete = command("delete", "delete a source (and its documents)")
    delete.add_argument("--keep-documents", action="store_true")
    sync = command("sync", "run a sync now (queued for Dagster; --inline runs it here)")
    sync.add_argument("--inline", action="store_true", help="run in this process and print the run")
    command("runs", "recent sync runs")
    actions.add_parser("rotate-secrets", help="re-encrypt every source's stored credentials with the first "
                                              "key of QUARRY_SECRET_KEY (all tenants; docs/syncs.md)")

    backfill = sub.add_parser("backfill", help="re-embed a collection with another embedder, then switch")
    backfill.add_argument("--tenant", required=True)
    backfill.add_argument("--collection", required=True, help="collection name or id")
    backfill.add_argument("--kind", default="openai", choices=["minilm", "openai"])
    backfill.add_argument("--model", default="")
    backfill.add_argument("--dim", type=int, default=0)
    backfill.add_argument("--base-url", default="")
    backfill.add_argument("--batch-size", type=int, default=64)
    backfill.add_argument("--no-switch", action="store_true")


def _print(value: Any) -> None:
    sys.stdout.write(json.dumps(json.loads(msgspec.json.encode(value)), indent=2) + "\n")


async def _tenant_id(conn: asyncpg.Connection, name: str) -> UUID:
    row = await conn.fetchrow("SELECT id FROM quarry_tenant_by_name($1)", name)
    if row is None:
        raise NotFound(f"no tenant named {name!r}")
    return UUID(str(row["id"]))


async def _source(conn: asyncpg.Connection, ref: str) -> sources.Source:
    try:
        return await sources.get_source(conn, UUID(ref))
    except ValueError:
        source_id = await conn.fetchval("SELECT id FROM sources WHERE name = $1", ref)
        if source_id is None:
            raise NotFound(f"no source named {ref!r}") from None
        return await sources.get_source(conn, source_id)


async def _collection_id(conn: asyncpg.Connection, ref: str) -> UUID:
    try:
        return UUID(ref)
    except ValueError:
        found = await conn.fetchval("SELECT id FROM collections WHERE name = $1", ref)
        if found is None:
            raise NotFound(f"no collection named {ref!r}") from None
        return UUID(str(found))


def _config(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise SystemExit("quarry: --config must be a JSON object")
    return value


async def rotate_secrets(settings: Settings, admin_url: str) -> dict[str, int]:
    """Every sealed credential re-encrypted with the first key; plaintext ones (written by
    earlier versions) sealed; ones none of the keys opens are counted and left alone (their
    sources fail to sync until the secret is set again). One transaction, the migration role."""
    box = secret_box(settings)
    if box is None:
        raise SystemExit("quarry: QUARRY_SECRET_KEY is not set")
    counts = {"sources": 0, "secrets": 0, "undecryptable": 0}
    pool = await create_pool(admin_url, min_size=1, max_size=1)  # the owner role: every tenant's sources
    try:
        async with pool.acquire() as conn, conn.transaction():
            for source_id, config in await sources.configs_with_fields(conn, sorted(SEALED_FIELDS)):
                changed = dict(config)
                for name in SEALED_FIELDS & config.keys():
                    value = config[name]
                    if is_sealed(value):
                        try:
                            changed[name] = box.reseal(value)
                        except SecretError:  # sealed with a key no longer configured: left as it is
                            counts["undecryptable"] += 1
                            continue
                    elif isinstance(value, str) and value:
                        changed[name] = box.seal(value, shown_value(value))
                    else:
                        continue
                    counts["secrets"] += 1
                if changed != config:
                    await sources.replace_config(conn, source_id, changed)
                    counts["sources"] += 1
    finally:
        await pool.close()
    return counts


async def run(settings: Settings, admin_url: str, args: argparse.Namespace) -> int:
    if args.action == "rotate-secrets":
        counts = await rotate_secrets(settings, admin_url)
        _print(counts)
        return 1 if counts["undecryptable"] else 0
    pool = await create_pool(with_credentials(admin_url, settings.app_db_user, settings.app_db_password),
                             min_size=1, max_size=3)
    try:
        owner = await asyncpg.connect(admin_url)  # tenants by name: an owner-only lookup
        try:
            tenant_id = await _tenant_id(owner, args.tenant)
        finally:
            await owner.close()
        if args.command == "backfill":
            return await _backfill(settings, admin_url, pool, tenant_id, args)
        return await _sources(settings, pool, tenant_id, args)
    finally:
        await pool.close()


async def _sources(settings: Settings, pool: asyncpg.Pool, tenant_id: UUID, args: argparse.Namespace) -> int:
    action = args.action
    async with tenant_tx(pool, tenant_id) as conn:
        if action == "list":
            items = await sources.list_sources(conn, collection_id=None, after=None, limit=1000)
            latest = await sync_runs.latest_runs(conn, [s.id for s in items])
            _print([source_out(s, latest.get(s.id)) for s in items])
            return 0
        if action == "create":
            created = await sources.create_source(
                conn, tenant_id=tenant_id, collection_id=await _collection_id(conn, args.collection), name=args.name,
                kind=args.kind, config=stored_config(args.kind, _config(args.config), settings, tenant_id),
                schedule=check_schedule(args.schedule), enabled=not args.disabled,
            )
            _print(source_out(created, None))
            return 0
        source = await _source(conn, args.source)
        if action in ("update", "enable", "disable"):
            changes: dict[str, Any] = {}
            if action != "update":
                changes["enabled"] = action == "enable"
            if action == "update" and args.name:
                changes["name"] = args.name
            if action == "update" and args.schedule:
                changes["schedule"] = None if args.schedule == "none" else check_schedule(args.schedule)
            if action == "update" and args.config:
                changes["config"] = stored_config(source.kind, _config(args.config), settings, tenant_id,
                                                  source.config)
            _print(source_out(await sources.update_source(conn, source.id, changes), None))
            return 0
        if action == "delete":
            deleted = await sources.delete_source(conn, source.id, delete_documents=not args.keep_documents)
            _print({"deleted": str(source.id), "documents_deleted": deleted})
            return 0
        if action == "runs":
            _print(await sync_runs.list_runs(conn, source.id, before=None, limit=20))
            return 0
        if not args.inline:
            queued, is_new = await sync_runs.request_run(conn, tenant_id, source.id, "manual")
            _print({"run": queued, "created": is_new})
            return 0
    return await _inline_sync(settings, pool, tenant_id, source.id)


async def _inline_sync(settings: Settings, pool: asyncpg.Pool, tenant_id: UUID, source_id: UUID) -> int:
    from pipelines.embedding import EmbedderResolver
    from pipelines.sync import SyncDeps, sync_parser, sync_source
    from rag.chunking import HFTokenizer
    from rag.embedders import make_embedder, tokenizer_path

    embedder = make_embedder(settings)
    resolver = EmbedderResolver(embedder, settings)
    try:
        async with sync_parser(settings) as parser:
            deps = SyncDeps(pool=pool, settings=settings, tokenizer=HFTokenizer.from_file(tokenizer_path()),
                            parser=parser, embedders=resolver, scratch_dir=settings.data_path / "sync-scratch")
            report = await sync_source(deps, tenant_id, source_id, trigger="manual")
    finally:
        await resolver.aclose()
        await embedder.aclose()
    _print({"run": report.run, "notes": report.notes, "timings_ms": report.timings_ms})
    return 0 if report.run.status == "succeeded" else 1


async def _backfill(
    settings: Settings, admin_url: str, pool: asyncpg.Pool, tenant_id: UUID, args: argparse.Namespace
) -> int:
    from pipelines.backfill import backfill_collection
    from pipelines.embedding import embedder_from_spec
    from storage.repositories.embedders import EmbedderSpec

    if args.kind == "minilm":
        spec = EmbedderSpec(name="minilm-l6-v2", kind="minilm", dim=384)
    else:
        if not args.model or args.dim < 1:
            raise SystemExit("quarry: --model and --dim are required for --kind openai")
        spec = EmbedderSpec(name=f"openai:{args.model}", kind="openai", model=args.model, dim=args.dim,
                            base_url=args.base_url or None)
    async with tenant_tx(pool, tenant_id, readonly=True) as conn:
        collection_id = await _collection_id(conn, args.collection)
    embedder = embedder_from_spec(spec, settings)
    try:
        report = await backfill_collection(pool, admin_url, tenant_id=tenant_id, collection_id=collection_id,
                                           embedder=embedder, spec=spec, batch_size=args.batch_size,
                                           switch=not args.no_switch)
    finally:
        await embedder.aclose()
    _print(report.__dict__)
    return 0
