"""Bounded gzip inflation for what connectors download (gzip sitemaps, `Content-Encoding: gzip`).

A gzip bomb is a few KB that inflate to gigabytes (deflate reaches ~1000:1, and a gzip of a
gzip multiplies that). `gzip.decompress` and httpx's own decoders inflate a whole input at once;
here zlib's `max_length` keeps every step at most `limit + 1` bytes, so the output never
exceeds `limit` by more than one byte and a bomb stops with `TooLarge` after about `limit` bytes
of work. Concatenated gzip members (allowed by RFC 1952) are followed; bytes after the last
member that do not start another one are ignored, as `gzip` does with trailing zero padding.

Hand-written because neither the standard library nor httpx offers a bounded decoder; it is a
loop around `zlib.decompressobj`.
"""

from __future__ import annotations

import zlib

__all__ = ["GzipInflater", "TooLarge", "inflate_gzip"]

_GZIP = 16 + zlib.MAX_WBITS  # a gzip header and trailer, not zlib's
_MAGIC = b"\x1f\x8b"


class TooLarge(ValueError):
    """The data inflates to more than the limit."""


class GzipInflater:
    """Incremental: `feed` compressed chunks as they arrive, then `finish`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._member: zlib._Decompress | None = zlib.decompressobj(_GZIP)
        self._done = False  # the last member ended and what followed was not another member

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        while data and not self._done:
            if self._member is None:
                if not data.startswith(_MAGIC[: len(data)]):
                    self._done = True  # trailing padding or garbage after the last member
                    break
                self._member = zlib.decompressobj(_GZIP)
            try:
                chunk = self._member.decompress(data, self.limit - self.size + 1)
            except zlib.error as exc:
                raise ValueError(f"invalid gzip data: {exc}") from None
            self.size += len(chunk)
            if self.size > self.limit:
                raise TooLarge(f"it inflates to more than {self.limit:,} bytes (a gzip bomb?)")
            out.append(chunk)
            if self._member.eof:
                data = self._member.unused_data
                self._member = None
            else:
                data = self._member.unconsumed_tail
        return b"".join(out)

    def finish(self) -> None:
        """Raise ValueError if the stream stopped inside a member."""
        # A step that filled its max_length went past the limit and raised, so a member that
        # is not at its end here ran out of input: the stream is cut short.
        if self._member is not None and not self._member.eof:
            raise ValueError("invalid gzip data: the stream is truncated")


def inflate_gzip(data: bytes, limit: int) -> bytes:
    """The whole of `data` inflated, or TooLarge past `limit` bytes (ValueError if not gzip)."""
    inflater = GzipInflater(limit)
    out = inflater.feed(data)
    inflater.finish()
    return out
