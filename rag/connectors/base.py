"""What a connector yields while scanning its source."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Connector", "ConnectorError", "Cursor", "Fetched", "Gone", "ItemFailed", "ScanResult", "Unchanged"]

Cursor = dict[str, Any]
"""An item's upstream version as the connector sees it (mtime+size, ETag, Last-Modified)."""


class ConnectorError(Exception):
    """The source as a whole cannot be scanned (folder missing, bucket unreachable, start URL
    refused): the run fails and deletes nothing."""


@dataclass(frozen=True)
class Unchanged:
    """Same upstream version as indexed: nothing is fetched, parsed or embedded."""

    uri: str


@dataclass(frozen=True)
class Fetched:
    """New or changed upstream content (the engine still compares its hash)."""

    uri: str
    data: bytes
    cursor: Cursor
    filename: str | None = None
    content_type: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Gone:
    """The source says the item no longer exists (e.g. HTTP 404/410)."""

    uri: str


@dataclass(frozen=True)
class ItemFailed:
    """This item could not be fetched this time; it is kept as indexed before (not deleted)."""

    uri: str
    error: str


ScanResult = Unchanged | Fetched | Gone | ItemFailed


class Connector(Protocol):
    complete: bool
    """After `scan`: did it see every item of the source? Only then are items it did not
    see deleted (a truncated crawl or an unreadable listing deletes nothing)."""
    notes: list[str]
    """Warnings about the scan as a whole (e.g. the page limit was reached)."""

    def scan(self, known: Mapping[str, Cursor]) -> AsyncIterator[ScanResult]: ...
