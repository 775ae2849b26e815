"""The `quarry` command line.

    quarry up                                  the whole platform (what `make run` calls)
    quarry api | worker | migrate              one part at a time
    quarry tenants create NAME [--operator]
    quarry keys create --tenant NAME --role admin|member|reader [--name TEXT]
    quarry keys revoke PREFIX
    quarry perf PROFILE [...]                  load/stress/endurance suite (docs/perf-suite.md)
    quarry sources list|create|update|enable|disable|delete|sync|runs --tenant NAME ...
    quarry sources rotate-secrets              re-encrypt S3 credentials with the first QUARRY_SECRET_KEY
    quarry backfill --tenant NAME --collection NAME --model M --dim N [--base-url URL]

A bad setting stops any command with a one-line message naming it and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable

from core.errors import QuarryError
from core.settings import Settings, SettingsError, load_settings

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quarry", description="Quarry RAG platform")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run the whole platform (embedded servers by default)")
    sub.add_parser("api", help="run the HTTP API under Granian")
    sub.add_parser("worker", help="run an arq worker")
    sub.add_parser("migrate", help="apply database migrations")

    tenants = sub.add_parser("tenants", help="manage tenants").add_subparsers(dest="action", required=True)
    create_tenant = tenants.add_parser("create", help="create a tenant")
    create_tenant.add_argument("name")
    create_tenant.add_argument("--operator", action="store_true",
                               help="its admins may administer other tenants")

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    create_key = keys.add_parser("create", help="create an API key (printed once)")
    create_key.add_argument("--tenant", required=True)
    create_key.add_argument("--role", required=True, choices=["admin", "member", "reader"])
    create_key.add_argument("--name", default="")
    revoke = keys.add_parser("revoke", help="revoke an API key by its prefix")
    revoke.add_argument("prefix")

    perf = sub.add_parser("perf", add_help=False,
                          help="load, stress and endurance runs: quarry perf PROFILE [...] (docs/perf-suite.md)")
    perf.add_argument("-h", "--help", dest="perf_help", action="store_true")
    perf.add_argument("perf_args", nargs=argparse.REMAINDER)

    from ops.sources import add_parsers as add_source_parsers

    add_source_parsers(sub)
    return parser


def _up(settings: Settings, _args: argparse.Namespace) -> int:
    from ops.supervisor import Supervisor

    return Supervisor(settings).run()


def _api(settings: Settings, _args: argparse.Namespace) -> int:
    granian = os.path.join(os.path.dirname(sys.executable), "granian")
    argv = [granian, "--interface", "asgi", "--factory", "--host", settings.host,
            "--port", str(settings.port), "--workers", str(settings.api_workers),
            "--loop", "uvloop", "--respawn-failed-workers", "api.app:app_factory"]
    os.execv(granian, argv)  # noqa: S606 - replaces this process by design


def _worker(settings: Settings, _args: argparse.Namespace) -> int:
    from arq.worker import run_worker

    from core.logs import configure_logging
    from jobs.worker import make_worker_settings

    configure_logging(settings.log_level)
    run_worker(make_worker_settings(settings))
    return 0


def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from ops.bootstrap import database_admin_url, prepare_database

    with database_admin_url(settings) as url:
        applied = asyncio.run(prepare_database(settings, url))
    print("applied: " + ", ".join(applied) if applied else "database is up to date")
    return 0


def _tenants(settings: Settings, args: argparse.Namespace) -> int:
    from ops import tenants
    from ops.bootstrap import database_admin_url

    with database_admin_url(settings) as url:
        tenant = asyncio.run(tenants.create_tenant(url, args.name, operator=args.operator))
    print(f"created tenant {tenant.name} ({tenant.id})")
    return 0


def _keys(settings: Settings, args: argparse.Namespace) -> int:
    from ops import tenants
    from ops.bootstrap import database_admin_url

    with database_admin_url(settings) as url:
        if args.action == "create":
            key, record = asyncio.run(tenants.create_key(url, args.tenant, args.role, args.name))
            print(f"# {record.role} key {record.prefix} for tenant {args.tenant}; shown once:",
                  file=sys.stderr)
            print(key)
        else:
            record = asyncio.run(tenants.revoke_key(url, args.prefix))
            print(f"revoked {record.prefix}")
            _forget_cached_key(settings, record.id)
    return 0


def _forget_cached_key(settings: Settings, key_id: object) -> None:
    """Drop the revoked key from the API's principal caches (Redis and every process)."""
    from ops.bootstrap import read_endpoints
    from storage.caches.principals import invalidate_key_everywhere

    redis_url = settings.redis_url or (read_endpoints(settings) or {}).get("redis_url")
    if not redis_url or not asyncio.run(invalidate_key_everywhere(redis_url, key_id)):  # type: ignore[arg-type]
        ttl = settings.principal_cache_local_ttl_s + settings.principal_cache_redis_ttl_s
        print(f"# Redis not reachable: running API processes may accept the key for up to {ttl:.0f} s more",
              file=sys.stderr)


def _sources(settings: Settings, args: argparse.Namespace) -> int:
    from ops import sources
    from ops.bootstrap import database_admin_url

    with database_admin_url(settings) as url:
        return asyncio.run(sources.run(settings, url, args))


def _perf(_settings: Settings, args: argparse.Namespace) -> int:
    # perf/ lives in the source tree (it is not installed): the editable checkout's root.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    from perf.run import main as perf_main

    return perf_main(["--help"] if args.perf_help else args.perf_args)


_COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "up": _up, "api": _api, "worker": _worker, "migrate": _migrate,
    "tenants": _tenants, "keys": _keys, "sources": _sources, "backfill": _sources, "perf": _perf,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"quarry: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command != "perf":
        from ops.bootstrap import with_embedded_secrets

        settings = with_embedded_secrets(settings)  # the embedded server's generated app password
    try:
        return _COMMANDS[args.command](settings, args)
    except QuarryError as exc:
        print(f"quarry: {exc.detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
