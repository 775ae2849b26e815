"""Opaque keyset cursors: base64url of a small JSON array (the last row's sort key)."""

from __future__ import annotations

import base64
from typing import Any

import msgspec

from core.errors import BadRequest

__all__ = ["decode_cursor", "encode_cursor"]


def encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(values)).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = msgspec.json.decode(raw)
    except (ValueError, msgspec.DecodeError):
        raise BadRequest("invalid cursor") from None
    if not isinstance(values, list):
        raise BadRequest("invalid cursor")
    return values
