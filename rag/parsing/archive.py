"""Bounded reading of ZIP archives (DOCX packages): a zip bomb is refused, never inflated.

Three lines of defence, because the sizes in a ZIP directory are written by whoever made the file:
`open_archive` first reads the end record and refuses a central directory of more than
`MAX_DIRECTORY_BYTES` (zipfile would build an object for each of a million tiny entries before
anyone could count them), `check_directory` refuses an archive whose directory *declares* too many entries or too many
inflated bytes (cheap: nothing is decompressed), and `read_parts` inflates each part in small
chunks, counting what really comes out, and stops at the first byte over the per-part or the
total cap, whatever the directory said. Neither cap is near the 512 MB that was accepted before:
real Word documents are a few MB inflated, their largest parts are embedded images.

Nested archives (a .zip or .docx embedded in the package) are never opened: python-docx reads
only the package's own XML parts, and an embedded archive costs at most its own part's cap.

Hand-written (a few lines over `zipfile`), because no maintained library bounds zipfile's
inflation while reading; `zipfile` itself truncates at the declared size in CPython but that is
an implementation detail, not a contract.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

__all__ = [
    "MAX_DIRECTORY_BYTES", "MAX_ENTRIES", "MAX_PART_BYTES", "MAX_TOTAL_BYTES", "ArchiveTooLarge", "check_directory",
    "open_archive", "read_parts",
]

MAX_ENTRIES = 2_000
MAX_PART_BYTES = 64 * 1024 * 1024
MAX_TOTAL_BYTES = 128 * 1024 * 1024
MAX_DIRECTORY_BYTES = 2 * 1024 * 1024
_CHUNK = 256 * 1024


class ArchiveTooLarge(ValueError):
    """The archive would inflate past a cap (or has too many entries): the detail says which."""


def open_archive(source: Path | IO[bytes], *, max_directory_bytes: int = MAX_DIRECTORY_BYTES) -> zipfile.ZipFile:
    """`zipfile.ZipFile(source)`, after refusing a central directory larger than the cap.

    The end record is located exactly as zipfile locates it (its own `_EndRecData`, which also
    follows a ZIP64 end record), so the size checked is the size zipfile would then read."""
    end_record = getattr(zipfile, "_EndRecData", None)
    if end_record is not None:
        stream: Any = source.open("rb") if isinstance(source, Path) else source
        try:
            record = end_record(stream)
        finally:
            if isinstance(source, Path):
                stream.close()
            else:
                stream.seek(0)
        if record is None:
            raise zipfile.BadZipFile("File is not a zip file")
        if record[zipfile._ECD_SIZE] > max_directory_bytes:  # type: ignore[attr-defined]
            raise ArchiveTooLarge(f"its ZIP directory is {record[zipfile._ECD_SIZE]:,} bytes "  # type: ignore[attr-defined]
                                  f"(at most {max_directory_bytes:,}: too many entries, a zip bomb?)")
    return zipfile.ZipFile(source)


def check_directory(
    infos: Iterable[zipfile.ZipInfo], *, max_entries: int = MAX_ENTRIES, max_part_bytes: int = MAX_PART_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> None:
    """Refuse an archive by what its directory declares: entry count, part sizes, total size."""
    total = 0
    for count, info in enumerate(infos, start=1):
        if count > max_entries:
            raise ArchiveTooLarge(f"it has more than {max_entries:,} entries (a zip bomb?)")
        if info.file_size > max_part_bytes:
            raise ArchiveTooLarge(f"its part {_name(info)} inflates to {info.file_size:,} bytes; "
                                  f"at most {max_part_bytes:,} are accepted per part (a zip bomb?)")
        total += info.file_size
        if total > max_total_bytes:
            raise ArchiveTooLarge(f"it inflates to more than {max_total_bytes:,} bytes in all (a zip bomb?)")


def read_parts(
    archive: zipfile.ZipFile, *, max_entries: int = MAX_ENTRIES, max_part_bytes: int = MAX_PART_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> dict[str, bytes]:
    """Every file of the archive, inflated under the caps whatever the directory declares."""
    infos = archive.infolist()
    check_directory(infos, max_entries=max_entries, max_part_bytes=max_part_bytes, max_total_bytes=max_total_bytes)
    parts: dict[str, bytes] = {}
    total = 0
    for info in infos:
        if info.is_dir():
            continue
        chunks: list[bytes] = []
        size = 0
        with archive.open(info) as member:
            while chunk := member.read(_CHUNK):
                size += len(chunk)
                total += len(chunk)
                if size > max_part_bytes:
                    raise ArchiveTooLarge(f"its part {_name(info)} inflates to more than {max_part_bytes:,} bytes "
                                          "(more than its directory declares: a zip bomb?)")
                if total > max_total_bytes:
                    raise ArchiveTooLarge(f"it inflates to more than {max_total_bytes:,} bytes in all "
                                          "(more than its directory declares: a zip bomb?)")
                chunks.append(chunk)
        parts[info.filename] = b"".join(chunks)
    return parts


def _name(info: zipfile.ZipInfo) -> str:
    name = info.filename if len(info.filename) <= 80 else info.filename[:79] + "…"
    return repr(name)
