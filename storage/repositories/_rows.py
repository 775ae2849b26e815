from __future__ import annotations

from typing import TypeVar

import asyncpg
import msgspec

T = TypeVar("T")


def to_struct(row: asyncpg.Record, cls: type[T]) -> T:
    return msgspec.convert(dict(row), cls)


def to_structs(rows: list[asyncpg.Record], cls: type[T]) -> list[T]:
    return [to_struct(r, cls) for r in rows]


def unique_violation(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.UniqueViolationError)


