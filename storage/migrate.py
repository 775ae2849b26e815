"""Ordered SQL migrations, applied once each under an advisory lock, with checksums.

Files `storage/migrations/NNNN_name.sql` run in order, each in its own transaction, and are
recorded in `schema_migrations` with the sha256 of their text. Editing a migration that was
already applied is an error (write a new one instead). After migrating, the application
role is created or updated: a LOGIN role that is neither superuser nor BYPASSRLS, so
row-level security always applies to the API, workers and pipelines. It writes only tenant
data (tables under RLS) and calls only the SECURITY DEFINER functions listed in
`APP_DEFINER_FUNCTIONS` (see 0012_least_privilege.sql).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

__all__ = ["APP_DEFINER_FUNCTIONS", "Migration", "MigrationError", "ensure_app_role", "ensure_database",
           "load_migrations", "migrate"]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_LOCK_KEY = 0x5175_6172_7279  # "Quarry": serialises concurrent `quarry migrate` runs
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """The database's migration history does not match the files on disk."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"bad migration file name: {path.name}")
        migrations.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return migrations


async def migrate(admin_url: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations; returns the names applied (empty when up to date)."""
    migrations = load_migrations(directory)
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            return await _apply(conn, migrations)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await conn.close()


async def _apply(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    await conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               version int PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now())"""
    )
    applied = {r["version"]: r for r in await conn.fetch("SELECT * FROM schema_migrations")}
    done = []
    for migration in migrations:
        row = applied.get(migration.version)
        if row is not None:
            if row["checksum"] != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} was changed after it "
                    "was applied; add a new migration instead"
                )
            continue
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version, migration.name, migration.checksum,
            )
        done.append(f"{migration.version:04d}_{migration.name}")
    return done


async def ensure_app_role(admin_url: str, role: str, password: str | None) -> None:
    """Create/update the application role and grant it table access (idempotent)."""
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        ident = _quote_ident(role)
        await _ensure_role(conn, role, password)
        database = await conn.fetchval("SELECT current_database()")
        await conn.execute(f"GRANT CONNECT ON DATABASE {_quote_ident(database)} TO {ident}")
        async with conn.transaction():  # a running API never sees its grants half reset
            await conn.execute(f"GRANT USAGE ON SCHEMA public TO {ident}")
            await _grant_least_privilege(conn, ident)
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await conn.close()


# Tables without row-level security are platform data: the app role reads them (plans,
# embedders) but never writes them. Tenant rows are RLS-guarded, yet `tenants` is platform
# data too: RLS alone would let a tenant edit its own row (plan, operator status).
_READ_ONLY_TABLES = ("tenants",)
_NO_ACCESS_TABLES = ("schema_migrations",)
# The SECURITY DEFINER functions the app role may call: what must happen before a tenant is
# known. Every other one (creating or listing tenants, changing a tenant's plan) is for the
# owner role only; a new one the app needs must be added here, deliberately.
APP_DEFINER_FUNCTIONS = (
    "quarry_auth_principal(bytea)",
    "quarry_auth_lookup(bytea)",
    "quarry_tenant_limits(uuid)",
)


async def _grant_least_privilege(conn: asyncpg.Connection, ident: str) -> None:
    """Reset the app role's table and function privileges to exactly what it needs, so the
    grants of an older version (DML and EXECUTE on everything) do not linger."""
    await conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {ident}")
    await conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {ident}")
    tenant_tables = await conn.fetch(
        """SELECT c.oid::regclass::text AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relrowsecurity
             AND c.relname <> ALL($1::text[])""",
        list(_READ_ONLY_TABLES + _NO_ACCESS_TABLES),
    )
    for row in tenant_tables:
        await conn.execute(f"GRANT INSERT, UPDATE, DELETE ON {row['name']} TO {ident}")
    for table in _NO_ACCESS_TABLES:
        await conn.execute(f"REVOKE ALL ON {_quote_ident(table)} FROM {ident}")
    await conn.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {ident}")
    # SECURITY INVOKER functions cannot do more than their caller: all of them (pgvector's,
    # the RLS helper, search helpers). SECURITY DEFINER ones: only the allowed few.
    await conn.execute(f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {ident}")
    definers = await conn.fetch(
        """SELECT p.oid::regprocedure::text AS signature FROM pg_proc p
           JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public' AND p.prosecdef"""
    )
    for row in definers:
        if row["signature"] not in APP_DEFINER_FUNCTIONS:
            await conn.execute(f"REVOKE EXECUTE ON FUNCTION {row['signature']} FROM {ident}")


async def _ensure_role(conn: asyncpg.Connection, role: str, password: str | None) -> None:
    """Roles are cluster-wide but advisory locks are per database: runs against other
    databases of the same server may race us here, so retry their conflicts."""
    ident = _quote_ident(role)
    for attempt in range(10):
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
                await conn.execute(
                    f"CREATE ROLE {ident} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"
                )
            await conn.execute(f"ALTER ROLE {ident} LOGIN NOSUPERUSER NOBYPASSRLS")
            if password:
                # Parameters cannot be bound in utility statements; quote it as a literal.
                literal = await conn.fetchval("SELECT quote_literal($1)", password)
                await conn.execute(f"ALTER ROLE {ident} PASSWORD {literal}")
            return
        except (asyncpg.DuplicateObjectError, asyncpg.UniqueViolationError,
                asyncpg.InternalServerError) as exc:
            # "role already exists" (either form) or "tuple concurrently updated"
            raced = not isinstance(exc, asyncpg.InternalServerError) or "concurrently" in str(exc)
            if not raced or attempt == 9:
                raise
            await asyncio.sleep(0.01 * (attempt + 1))


async def ensure_database(admin_url: str, name: str) -> bool:
    """Create database `name` on the server of `admin_url` if missing; True if created."""
    conn = await asyncpg.connect(admin_url)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        try:
            await conn.execute(f"CREATE DATABASE {_quote_ident(name)}")
        except asyncpg.DuplicateDatabaseError:  # created concurrently
            return False
        return True
    finally:
        await conn.close()


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
