"""Folder connector: files under a directory, filtered by include/exclude globs.

The cursor of a file is its (mtime_ns, size): a file whose stat is unchanged is not read.
Symbolic links are followed only when they stay inside the folder.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from rag.connectors.base import ConnectorError, Cursor, Fetched, ItemFailed, ScanResult, Unchanged
from rag.connectors.config import FolderConfig
from rag.connectors.globs import matches

__all__ = ["FolderConnector"]


class FolderConnector:
    def __init__(self, config: FolderConfig, *, max_item_bytes: int) -> None:
        self.config = config
        self.max_item_bytes = min(max_item_bytes, config.max_item_bytes or max_item_bytes)
        self.complete = False
        self.notes: list[str] = []

    def _list(self) -> list[tuple[str, Path, os.stat_result]]:
        root = Path(self.config.path).resolve()
        if not root.is_dir():
            raise ConnectorError(f"the folder {self.config.path} does not exist or is not a directory")
        found = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                rel = path.relative_to(root).as_posix()
                if not matches(rel, self.config.include, self.config.exclude):
                    continue
                real = path.resolve()
                if not real.is_relative_to(root):
                    self.notes.append(f"{rel}: skipped, a link that leads outside the folder")
                    continue
                try:
                    stat = real.stat()
                except OSError:
                    continue  # vanished while listing
                found.append((rel, real, stat))
        return found

    def _read(self, path: Path) -> bytes:
        with path.open("rb") as stream:
            data = stream.read(self.max_item_bytes + 1)
        if len(data) > self.max_item_bytes:
            raise ValueError(f"the file is larger than {self.max_item_bytes} bytes")
        return data

    async def scan(self, known: Mapping[str, Cursor]) -> AsyncIterator[ScanResult]:
        files = await asyncio.to_thread(self._list)
        for rel, path, stat in files:
            cursor: Cursor = {"mtime_ns": stat.st_mtime_ns, "size": stat.st_size}
            if known.get(rel) == cursor:
                yield Unchanged(rel)
                continue
            if stat.st_size > self.max_item_bytes:
                yield ItemFailed(rel, f"the file is larger than {self.max_item_bytes} bytes")
                continue
            try:
                data = await asyncio.to_thread(self._read, path)
            except (OSError, ValueError) as exc:
                yield ItemFailed(rel, f"cannot read the file: {exc}")
                continue
            yield Fetched(rel, data, cursor, filename=path.name, metadata={"path": rel})
        self.complete = True
