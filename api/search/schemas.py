from __future__ import annotations

from typing import Annotated
from uuid import UUID

import msgspec

from api.metadata_filters import MetadataFilter, filter_problem
from storage.models import SearchHit
from storage.repositories.search import SearchMode

MAX_K = 50
MAX_QUERY_CHARS = 2000
MAX_COLLECTIONS = 100
MAX_CURSOR_CHARS = 512


class SearchFilter(msgspec.Struct, forbid_unknown_fields=True):
    metadata: MetadataFilter | None = None
    """Documents whose metadata contains this JSON object."""

    def __post_init__(self) -> None:
        # Raised while decoding, so it arrives as a 422 like any other shape error.
        problem = filter_problem(self.metadata) if self.metadata else None
        if problem:
            raise ValueError(problem)


class SearchRequest(msgspec.Struct, forbid_unknown_fields=True):
    query: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_QUERY_CHARS)]
    collections: Annotated[list[UUID], msgspec.Meta(max_length=MAX_COLLECTIONS)] | None = None
    filter: SearchFilter | None = None
    k: Annotated[int, msgspec.Meta(ge=1, le=MAX_K)] = 10
    mode: SearchMode = "hybrid"
    cursor: Annotated[str, msgspec.Meta(max_length=MAX_CURSOR_CHARS)] | None = None


class SearchResponse(msgspec.Struct):
    hits: list[SearchHit]
    next_cursor: str | None
    mode: SearchMode
    took_ms: float
