"""Per-kind source configuration, validated with msgspec; errors name the field.

`validate_config(kind, raw, ...)` returns the typed config or raises `ConfigError` whose
`field` is a dotted path such as ``config.max_depth``. Secrets (S3 keys) are kept in the
database but never returned whole: `redact_config` masks them for API answers and logs.

Folder sources are confined per tenant: a tenant reads only `<root>/<tenant id>/` of each
root in QUARRY_CONNECTOR_FOLDER_ROOTS (the id, not the name: a name can be reused by a new
tenant after the old one is deleted, an id cannot). A source's `path` is relative to that
folder (of the first root), or absolute inside it; it is resolved with `realpath` (symbolic
links included) and must stay inside. No root may overlap the data directory.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit
from uuid import UUID

import msgspec

from rag.connectors.netguard import NetPolicy

__all__ = [
    "SECRET_FIELDS", "ConfigError", "FolderConfig", "FolderLocation", "FolderRoots", "S3Config", "SourceConfig",
    "WebsiteConfig", "redact_config", "resolve_folder", "validate_config",
]

Glob = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
Bytes = Annotated[int, msgspec.Meta(ge=1)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=600)]


class FolderConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    path: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    include: list[Glob] = msgspec.field(default_factory=lambda: ["**/*"])
    exclude: list[Glob] = msgspec.field(default_factory=list)
    max_item_bytes: Bytes | None = None


class WebsiteConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    start_url: Annotated[str, msgspec.Meta(max_length=2048)] | None = None
    sitemap_url: Annotated[str, msgspec.Meta(max_length=2048)] | None = None
    max_depth: Annotated[int, msgspec.Meta(ge=0, le=20)] = 2
    max_pages: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 200
    delay_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 1.0
    """Politeness: least time between two requests to the host (robots.txt may ask for more)."""
    max_page_bytes: Bytes | None = None
    timeout_s: Seconds | None = None
    include: list[Glob] = msgspec.field(default_factory=list)
    """Globs on the URL path (e.g. ``/docs/**``); empty: every page of the host."""
    exclude: list[Glob] = msgspec.field(default_factory=list)


class S3Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    bucket: Annotated[str, msgspec.Meta(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.\-_]*[a-z0-9]$")]
    prefix: Annotated[str, msgspec.Meta(max_length=1024)] = ""
    endpoint_url: Annotated[str, msgspec.Meta(max_length=2048)] | None = None
    region: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$")] = "us-east-1"
    access_key_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    secret_access_key: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    include: list[Glob] = msgspec.field(default_factory=list)
    exclude: list[Glob] = msgspec.field(default_factory=list)
    max_item_bytes: Bytes | None = None
    timeout_s: Seconds | None = None


SourceConfig = FolderConfig | WebsiteConfig | S3Config
_BY_KIND: dict[str, type[SourceConfig]] = {"folder": FolderConfig, "website": WebsiteConfig, "s3": S3Config}
SECRET_FIELDS = frozenset({"secret_access_key"})


class ConfigError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


_AT = re.compile(r"^(?P<msg>.*?) - at `\$(?P<path>[^`]*)`$")
_MISSING = re.compile(r"missing required field `(?P<name>[^`]+)`")
_UNKNOWN = re.compile(r"unknown field `(?P<name>[^`]+)`")


def _field_of(message: str) -> tuple[str, str]:
    """msgspec's "Expected `int`, got `str` - at `$.max_depth`" -> ("config.max_depth", ...)."""
    msg, path = message, ""
    if (m := _AT.match(message)) is not None:
        msg, path = m["msg"], m["path"]
    name = _MISSING.search(msg) or _UNKNOWN.search(msg)
    if name is not None:
        path = f"{path}.{name['name']}"
    return "config" + re.sub(r"\[(\d+)\]", r"[\1]", path), msg


@dataclass(frozen=True)
class FolderRoots:
    """The operator's folder roots, as real paths, and why they cannot be used (if so)."""

    roots: tuple[Path, ...]
    problem: str | None = None

    @classmethod
    def parse(cls, text: str, *, data_dir: Path | None) -> FolderRoots:
        """QUARRY_CONNECTOR_FOLDER_ROOTS (comma-separated); a root that overlaps `data_dir`
        (uploads, the embedded databases, keys) disables folder sources altogether."""
        roots = tuple(dict.fromkeys(Path(os.path.realpath(p.strip())) for p in text.split(",") if p.strip()))
        for i, root in enumerate(roots):
            if any(root.is_relative_to(other) or other.is_relative_to(root) for other in roots[i + 1:]):
                # Nested roots would put one tenant's folder inside another's.
                return cls(roots, "folder sources are disabled on this server: two folder roots overlap "
                                  "(the operator fixes QUARRY_CONNECTOR_FOLDER_ROOTS)")
        if data_dir is not None:
            data = Path(os.path.realpath(data_dir))
            for root in roots:
                if root == data or root.is_relative_to(data) or data.is_relative_to(root):
                    return cls(roots, "folder sources are disabled on this server: a folder root overlaps the data "
                                      "directory (the operator fixes QUARRY_CONNECTOR_FOLDER_ROOTS)")
        return cls(roots)


@dataclass(frozen=True)
class FolderLocation:
    tenant_dir: Path
    """`<root>/<tenant id>` (the root a real path, this last component not a link)."""
    parts: tuple[str, ...]
    """The source's folder below `tenant_dir`, symbolic links resolved."""


def resolve_folder(config: FolderConfig, roots: FolderRoots, tenant_id: UUID | str) -> FolderLocation:
    """Where a folder source reads, confined to the tenant's folder; ConfigError otherwise."""
    if roots.problem:
        raise ConfigError("config.path", roots.problem)
    if not roots.roots:
        raise ConfigError("config.path", "folder sources are disabled on this server "
                                         "(the operator sets QUARRY_CONNECTOR_FOLDER_ROOTS)")
    if "\0" in config.path:
        raise ConfigError("config.path", "must not contain NUL characters")
    tenant_id = str(UUID(str(tenant_id)))  # canonical: the folder name is never a path of its own
    tenant_dirs = [root / tenant_id for root in roots.roots]
    path = Path(config.path)
    real = Path(os.path.realpath(path if path.is_absolute() else tenant_dirs[0] / path))
    for tenant_dir in tenant_dirs:
        if real == tenant_dir or real.is_relative_to(tenant_dir):
            break
    else:
        raise ConfigError("config.path", "must be inside this tenant's folder: a path relative to it, or an absolute "
                                         f"path under `<root>/{tenant_id}/` of a QUARRY_CONNECTOR_FOLDER_ROOTS root "
                                         "(symbolic links that lead elsewhere are refused)")
    if not real.is_dir():
        if not tenant_dir.is_dir():
            raise ConfigError("config.path", f"this tenant has no folder yet: the operator creates `{tenant_id}/` "
                                             "in a QUARRY_CONNECTOR_FOLDER_ROOTS root")
        raise ConfigError("config.path", "is not an existing directory")
    return FolderLocation(tenant_dir, real.relative_to(tenant_dir).parts)


def validate_config(
    kind: str, raw: Any, *, policy: NetPolicy, folder_roots: FolderRoots, tenant_id: UUID | str
) -> SourceConfig:
    cls = _BY_KIND.get(kind)
    if cls is None:
        raise ConfigError("kind", f"unknown kind {kind!r}; one of: {', '.join(_BY_KIND)}")
    if not isinstance(raw, dict):
        raise ConfigError("config", "must be an object")
    try:
        config = msgspec.convert(raw, cls)
    except msgspec.ValidationError as exc:
        field, message = _field_of(str(exc))
        raise ConfigError(field, message) from None
    if isinstance(config, FolderConfig):
        resolve_folder(config, folder_roots, tenant_id)
    elif isinstance(config, WebsiteConfig):
        _check_website(config, policy)
    else:
        _check_s3(config, policy)
    return config


def check_url(field: str, url: str, policy: NetPolicy) -> None:
    """Scheme and host sanity, and literal private addresses (names are checked when fetched,
    on every resolved address and every redirect)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(field, "must be an http:// or https:// URL")
    host = parts.hostname
    if not host:
        raise ConfigError(field, "must have a host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ConfigError(field, "has an invalid port") from None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if host == "localhost" or host.endswith(".localhost"):
        address = ipaddress.ip_address("127.0.0.1")
    if address is not None and not policy.permits(address, host, port):
        raise ConfigError(field, f"refers to a private, loopback or link-local address ({address}); "
                                 "the operator may allow it with QUARRY_CONNECTOR_ALLOW_PRIVATE")


def _check_website(config: WebsiteConfig, policy: NetPolicy) -> None:
    if not config.start_url and not config.sitemap_url:
        raise ConfigError("config.start_url", "a website source needs start_url or sitemap_url")
    if config.start_url:
        check_url("config.start_url", config.start_url, policy)
    if config.sitemap_url:
        check_url("config.sitemap_url", config.sitemap_url, policy)
    if config.start_url and config.sitemap_url:
        if urlsplit(config.start_url).netloc.lower() != urlsplit(config.sitemap_url).netloc.lower():
            raise ConfigError("config.sitemap_url", "must be on the same host as start_url")


def _check_s3(config: S3Config, policy: NetPolicy) -> None:
    if config.endpoint_url:
        check_url("config.endpoint_url", config.endpoint_url, policy)
    if bool(config.access_key_id) != bool(config.secret_access_key):
        field = "config.secret_access_key" if config.access_key_id else "config.access_key_id"
        raise ConfigError(field, "access_key_id and secret_access_key go together")


def redact_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config safe to show: secrets reduced to their last 4 characters."""
    out = dict(config)
    for name in SECRET_FIELDS & out.keys():
        value = out[name]
        if isinstance(value, str) and value:
            out[name] = "****" + value[-4:] if len(value) >= 12 else "****"
    return out
