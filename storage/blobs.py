"""Uploaded files on local disk, content-addressed: `<data_dir>/uploads/<tenant>/<sha256>`.

Uploads are streamed here piece by piece (never held whole in memory), hashed on the way,
and cut off as soon as they exceed the size limit. Identical content is stored once per
tenant. The ingestion job reads the file and deletes it when the document is final.
Scale-out note: API and workers must share this folder (a shared volume) — see docs.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import anyio

from core.errors import PayloadTooLarge

__all__ = ["BlobStore", "BlobWriter", "StoredBlob"]

_HEAD_BYTES = 4096


@dataclass(frozen=True)
class StoredBlob:
    path: Path
    sha256: str
    size: int
    head: bytes  # the first bytes, for format detection
    existed: bool  # the same bytes were already stored (another pending document has them)


class BlobWriter:
    """Incremental writer: `write` pieces, then `finish` (or `abort` on any error)."""

    def __init__(self, folder: Path, max_bytes: int, name: str) -> None:
        self.folder, self.max_bytes, self.name = folder, max_bytes, name
        self.tmp = folder / f".incoming-{uuid.uuid4().hex}"
        self._digest = hashlib.sha256()
        self._size = 0
        self._head = b""
        self._file: anyio.AsyncFile[bytes] | None = None

    async def write(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self.max_bytes:
            raise PayloadTooLarge(f"{self.name} is larger than the limit of {self.max_bytes} bytes")
        if self._file is None:
            await anyio.Path(self.folder).mkdir(parents=True, exist_ok=True)
            self._file = await anyio.open_file(self.tmp, "wb")
        if len(self._head) < _HEAD_BYTES:
            self._head += data[: _HEAD_BYTES - len(self._head)]
        self._digest.update(data)
        await self._file.write(data)

    async def finish(self) -> StoredBlob:
        if self._file is None:  # nothing written: an empty file
            await anyio.Path(self.folder).mkdir(parents=True, exist_ok=True)
            self._file = await anyio.open_file(self.tmp, "wb")
        await self._file.aclose()
        final = self.folder / self._digest.hexdigest()
        existed = await anyio.Path(final).exists()
        await anyio.to_thread.run_sync(os.replace, self.tmp, final)
        return StoredBlob(final, self._digest.hexdigest(), self._size, self._head, existed)

    async def abort(self) -> None:
        if self._file is not None:
            await self._file.aclose()
        await anyio.Path(self.tmp).unlink(missing_ok=True)


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def under(cls, data_dir: Path) -> BlobStore:
        """The platform's store: `<data_dir>/uploads`."""
        return cls(data_dir / "uploads")

    def path_for(self, tenant_id: uuid.UUID | str, sha256: str) -> Path:
        return self.root / str(tenant_id) / sha256

    def writer(self, tenant_id: uuid.UUID | str, max_bytes: int, name: str = "file") -> BlobWriter:
        return BlobWriter(self.root / str(tenant_id), max_bytes, name)

    async def save_bytes(self, tenant_id: uuid.UUID | str, data: bytes, name: str = "document") -> StoredBlob:
        writer = self.writer(tenant_id, max(len(data), 1), name)
        try:
            await writer.write(data)
            return await writer.finish()
        except BaseException:
            await writer.abort()
            raise

    def delete(self, tenant_id: uuid.UUID | str, sha256: str) -> None:
        self.path_for(tenant_id, sha256).unlink(missing_ok=True)
