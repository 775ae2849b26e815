"""Folder connector: files under a directory of the tenant's folder, filtered by globs.

The cursor of a file is its (mtime_ns, size): a file whose stat is unchanged is not read.

Confinement (the tenant may control what is in its folder, links included): the source's
folder was resolved (realpath) and checked to be inside `<root>/<tenant id>` by
`resolve_folder`; here it is opened from the tenant folder one component at a time with
O_NOFOLLOW, so a component swapped for a link after the check is refused instead of
followed, and the scan holds that directory open. Files are listed with `os.fwalk` (never
descends a link) and opened the same way, relative to the held directory, component by
component with O_NOFOLLOW (and O_NONBLOCK, so a FIFO cannot hang the read): nothing is
ever opened by a path that a link could redirect. A link to a file is followed only when its
target lies inside the source's folder (its resolved path is then opened like any file);
links to directories are not descended; FIFOs, sockets and devices are skipped.

Hand-written because the standard library has no `openat2(RESOLVE_BENEATH)`.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat as st
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from rag.connectors.base import ConnectorError, Cursor, Fetched, ItemFailed, ScanResult, Unchanged
from rag.connectors.config import FolderConfig, FolderLocation
from rag.connectors.globs import matches

__all__ = ["FolderConnector", "open_beneath"]

MAX_FILES = 100_000
"""Files listed per scan at most (the listing is held in memory): beyond, the scan is partial
(nothing is deleted) and says so."""
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_beneath(dir_fd: int, parts: tuple[str, ...], *, directory: bool) -> int:
    """Open `parts` below `dir_fd` without following any link (OSError ELOOP/ENOTDIR if a
    component is one). The caller closes the returned descriptor."""
    if any(p in ("", ".", "..") or "/" in p for p in parts):
        raise OSError(errno.EINVAL, "invalid path component")
    fd = os.dup(dir_fd)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = _FILE_FLAGS if last and not directory else _DIR_FLAGS
            next_fd = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


class FolderConnector:
    def __init__(self, config: FolderConfig, location: FolderLocation, *, max_item_bytes: int) -> None:
        self.config = config
        self.location = location
        self.max_item_bytes = min(max_item_bytes, config.max_item_bytes or max_item_bytes)
        self.complete = False
        self.truncated = False
        self.notes: list[str] = []

    def _open_folder(self) -> int:
        try:
            tenant_fd = os.open(self.location.tenant_dir, _DIR_FLAGS)
        except OSError:
            raise ConnectorError(f"the folder {self.config.path} does not exist or is not a directory") from None
        try:
            return open_beneath(tenant_fd, self.location.parts, directory=True)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise ConnectorError(f"the folder {self.config.path} changed into a symbolic link or a file "
                                     "since it was checked; not followed") from None
            raise ConnectorError(f"the folder {self.config.path} does not exist or is not a directory") from None
        finally:
            os.close(tenant_fd)

    def _list(self, folder_fd: int) -> list[tuple[str, tuple[str, ...], os.stat_result]]:
        """(relative path, the parts to open below the folder, stat) of every wanted file."""
        folder_real = self.location.tenant_dir.joinpath(*self.location.parts)
        found: list[tuple[str, tuple[str, ...], os.stat_result]] = []
        for dirpath, dirnames, filenames, dir_fd in os.fwalk(".", dir_fd=folder_fd, follow_symlinks=False):
            if self.truncated:
                break
            dirnames.sort()
            prefix = tuple(p for p in dirpath.split("/") if p not in ("", "."))
            for name in sorted(filenames):
                if len(found) >= MAX_FILES:
                    self.truncated = True
                    self.notes.append(f"stopped listing at {MAX_FILES} files: the files not listed are kept, "
                                      "nothing was deleted")
                    break
                parts = (*prefix, name)
                rel = "/".join(parts)
                if not matches(rel, self.config.include, self.config.exclude):
                    continue
                try:
                    info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                except OSError:
                    continue  # vanished while listing
                if st.S_ISLNK(info.st_mode):
                    target = self._link_target(folder_real, rel)
                    if target is None:
                        self.notes.append(f"{rel}: skipped, a link that leads outside the folder")
                        continue
                    parts = target
                    try:
                        fd = open_beneath(folder_fd, parts, directory=False)
                    except OSError:
                        self.notes.append(f"{rel}: skipped, a link to something that cannot be opened")
                        continue
                    try:
                        info = os.fstat(fd)
                    finally:
                        os.close(fd)
                if not st.S_ISREG(info.st_mode):
                    if not st.S_ISDIR(info.st_mode):
                        self.notes.append(f"{rel}: skipped, not a regular file")
                    continue
                found.append((rel, parts, info))
        return found

    @staticmethod
    def _link_target(folder_real: Path, rel: str) -> tuple[str, ...] | None:
        """The parts below the folder a link resolves to, if it stays inside (the path is
        only a hint: it is then opened component by component without following links)."""
        target = Path(os.path.realpath(folder_real / rel))
        if target == folder_real or not target.is_relative_to(folder_real):
            return None
        return target.relative_to(folder_real).parts

    def _read(self, folder_fd: int, parts: tuple[str, ...]) -> bytes:
        fd = open_beneath(folder_fd, parts, directory=False)
        with os.fdopen(fd, "rb") as stream:
            info = os.fstat(stream.fileno())
            if not st.S_ISREG(info.st_mode):
                raise ValueError("not a regular file")
            os.set_blocking(stream.fileno(), True)
            data = stream.read(self.max_item_bytes + 1)
        if len(data) > self.max_item_bytes:
            raise ValueError(f"the file is larger than {self.max_item_bytes} bytes")
        return data

    async def scan(self, known: Mapping[str, Cursor]) -> AsyncIterator[ScanResult]:
        folder_fd = await asyncio.to_thread(self._open_folder)
        try:
            files = await asyncio.to_thread(self._list, folder_fd)
            for rel, parts, info in files:
                cursor: Cursor = {"mtime_ns": info.st_mtime_ns, "size": info.st_size}
                if known.get(rel) == cursor:
                    yield Unchanged(rel)
                    continue
                if info.st_size > self.max_item_bytes:
                    yield ItemFailed(rel, f"the file is larger than {self.max_item_bytes} bytes")
                    continue
                try:
                    data = await asyncio.to_thread(self._read, folder_fd, parts)
                except OSError as exc:
                    reason = "it became a symbolic link" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
                    yield ItemFailed(rel, f"cannot read the file: {reason}")
                    continue
                except ValueError as exc:
                    yield ItemFailed(rel, f"cannot read the file: {exc}")
                    continue
                yield Fetched(rel, data, cursor, filename=parts[-1], metadata={"path": rel})
            self.complete = not self.truncated
        finally:
            os.close(folder_fd)
