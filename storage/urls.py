"""Small helpers to derive Postgres URLs (other role, other database) from one base URL."""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

__all__ = ["redact", "with_credentials", "with_database"]


def with_credentials(url: str, user: str, password: str | None) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    return urlunsplit(parts._replace(netloc=f"{auth}@{host}"))


def with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + quote(database, safe="")))


def redact(url: str) -> str:
    """The URL without its password, safe for logs and error messages."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}" if ":" in userinfo else parts.netloc))
