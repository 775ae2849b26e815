"""The embedded servers trust no local connection: Postgres wants a scram password from every
client (replication included), Valkey its `requirepass`; the generated passwords live in 0600
files, and a data dir made by an older version that trusted everyone is upgraded on start."""

from __future__ import annotations

import stat

import asyncpg
import pytest
import redis
from redis.asyncio import Redis

from storage.embedded import EmbeddedPostgres, EmbeddedValkey, pg_secrets_path


def _socket_url(pg: EmbeddedPostgres, userinfo: str) -> str:
    return f"postgresql://{userinfo}@/postgres?host={pg.socket_dir}&port={pg.port}"


async def _refused(url: str) -> None:
    with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
        conn = await asyncpg.connect(url)
        await conn.close()


async def test_postgres_refuses_connections_without_the_password(servers, settings):
    pg = servers.postgres
    await _refused(_socket_url(pg, "postgres"))  # the Unix socket: no trust, no peer
    await _refused(_socket_url(pg, "postgres:wrong"))
    await _refused(f"postgresql://postgres@127.0.0.1:{pg.port}/postgres")
    await _refused(_socket_url(pg, "quarry_app"))
    for url in (pg.url(), pg.tcp_url(), _socket_url(pg, f"quarry_app:{settings.app_db_password}")):
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()


def test_secrets_are_private_files(servers):
    for path in (pg_secrets_path(servers.postgres.pgdata), servers.valkey.data_dir / "password",
                 servers.valkey.data_dir / "valkey.conf"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert servers.postgres.password not in repr(servers.postgres.secrets)


async def test_a_trusting_cluster_of_an_older_version_is_upgraded(tmp_path):
    old = EmbeddedPostgres(tmp_path / "pg")
    old._prepare()
    old._run("initdb", "-D", str(old.pgdata), "--auth=trust", "--encoding=UTF8", "--locale=C", "-U", "postgres")
    pg_secrets_path(old.pgdata).unlink()  # older versions kept no secrets either
    pg = EmbeddedPostgres(tmp_path / "pg")
    pg.start()
    try:
        await _refused(_socket_url(pg, "postgres"))
        conn = await asyncpg.connect(pg.url())
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
    finally:
        pg.stop()
    pg.start()  # and it stays so on the next start
    try:
        await _refused(_socket_url(pg, "postgres"))
    finally:
        pg.stop()


async def test_valkey_requires_its_password(servers):
    valkey = servers.valkey
    anonymous = Redis.from_url(f"redis://127.0.0.1:{valkey.port}/0")
    try:
        with pytest.raises(redis.AuthenticationError):
            await anonymous.ping()
    finally:
        await anonymous.aclose()
    client = Redis.from_url(valkey.url)
    try:
        assert await client.ping()
    finally:
        await client.aclose()


def test_valkey_keeps_its_password_across_restarts(tmp_path):
    first = EmbeddedValkey(tmp_path / "valkey")
    again = EmbeddedValkey(tmp_path / "valkey")
    assert first.password == again.password and len(first.password) >= 32
    assert first.password not in EmbeddedValkey(tmp_path / "other").url
