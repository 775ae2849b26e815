from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import msgspec

from storage.models import SearchHit
from storage.repositories.search import SearchMode

MAX_K = 50


class SearchFilter(msgspec.Struct, forbid_unknown_fields=True):
    metadata: dict[str, Any] | None = None
    """Documents whose metadata contains this JSON object."""


class SearchRequest(msgspec.Struct, forbid_unknown_fields=True):
    query: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]
    collections: Annotated[list[UUID], msgspec.Meta(max_length=100)] | None = None
    filter: SearchFilter | None = None
    k: Annotated[int, msgspec.Meta(ge=1, le=MAX_K)] = 10
    mode: SearchMode = "hybrid"
    cursor: str | None = None


class SearchResponse(msgspec.Struct):
    hits: list[SearchHit]
    next_cursor: str | None
    mode: SearchMode
    took_ms: float
