"""Per-kind source configuration, validated with msgspec; errors name the field.

`validate_config(kind, raw, ...)` returns the typed config or raises `ConfigError` whose
`field` is a dotted path such as ``config.max_depth``. Secrets (S3 keys) are kept in the
database but never returned whole: `redact_config` masks them for API answers and logs.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec

from rag.connectors.netguard import NetPolicy

__all__ = [
    "SECRET_FIELDS", "ConfigError", "FolderConfig", "S3Config", "SourceConfig", "WebsiteConfig", "parse_roots",
    "redact_config", "validate_config",
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
    region: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "us-east-1"
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


def parse_roots(text: str) -> list[Path]:
    """QUARRY_CONNECTOR_FOLDER_ROOTS: comma-separated directories, resolved."""
    return [Path(p.strip()).resolve() for p in text.split(",") if p.strip()]


def validate_config(
    kind: str, raw: Any, *, policy: NetPolicy, folder_roots: list[Path]
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
        _check_folder(config, folder_roots)
    elif isinstance(config, WebsiteConfig):
        _check_website(config, policy)
    else:
        _check_s3(config, policy)
    return config


def _check_folder(config: FolderConfig, roots: list[Path]) -> None:
    path = Path(config.path)
    if not path.is_absolute():
        raise ConfigError("config.path", "must be an absolute path")
    if not roots:
        raise ConfigError("config.path", "folder sources are disabled on this server "
                                         "(the operator sets QUARRY_CONNECTOR_FOLDER_ROOTS)")
    resolved = path.resolve()
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise ConfigError("config.path", "must be inside one of the folders the operator allows "
                                         "(QUARRY_CONNECTOR_FOLDER_ROOTS)")
    if not resolved.is_dir():
        raise ConfigError("config.path", "is not an existing directory")


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
