"""The agent's tools: what they are called, what the model is told about them, what they
return to the agent (`Passage`) and what the model reads back (the observation JSON).

The tool implementations are injected (`Toolbox`): the API's live in `api/chat/tools.py` and
run every query inside `tenant_tx`, so row-level security decides what a tool can see.
"""

from __future__ import annotations

from typing import Annotated, Any, Protocol
from uuid import UUID

import msgspec

from rag.llm.base import ToolSpec

__all__ = [
    "LIST_COLLECTIONS", "READ_DOCUMENT", "SEARCH", "TOOL_SPECS", "CollectionInfo", "CollectionsObservation",
    "Passage", "ReadArgs", "ReadObservation", "SearchArgs", "SearchObservation", "SourceView", "ToolError",
    "Toolbox",
]

SEARCH = "search"
READ_DOCUMENT = "read_document"
LIST_COLLECTIONS = "list_collections"


class Passage(msgspec.Struct, kw_only=True, frozen=True):
    """A chunk a tool returned: always one the tenant owns (the query ran under its RLS)."""

    chunk_id: int
    document_id: UUID
    collection_id: UUID
    title: str
    uri: str | None
    ord: int
    text: str
    heading: str | None = None
    page: int | None = None
    score: float = 0.0


class CollectionInfo(msgspec.Struct, kw_only=True, frozen=True):
    id: UUID
    name: str
    description: str


class Toolbox(Protocol):
    async def search(self, query: str, *, k: int, collection: str | None) -> list[Passage]:
        """Hybrid search over the collections in scope (`collection`, a name, narrows it further)."""
        ...

    async def read_document(self, chunk_id: int, *, before: int, after: int) -> list[Passage]:
        """The chunk and its neighbours in the same document, in document order."""
        ...

    async def list_collections(self) -> list[CollectionInfo]: ...


# --- arguments (validated; a bad call becomes a tool error the model can correct) ---------


class SearchArgs(msgspec.Struct, forbid_unknown_fields=False):
    query: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
    k: Annotated[int, msgspec.Meta(ge=1, le=20)] = 6
    collection: str | None = None


class ReadArgs(msgspec.Struct, forbid_unknown_fields=False):
    source: Annotated[int, msgspec.Meta(ge=1)]
    before: Annotated[int, msgspec.Meta(ge=0, le=5)] = 1
    after: Annotated[int, msgspec.Meta(ge=0, le=5)] = 1


# --- observations: the JSON the model reads in the tool message ----------------------------


class SourceView(msgspec.Struct, kw_only=True):
    n: int
    """The number to cite, as [n]."""
    title: str
    text: str
    heading: str | None = None
    page: int | None = None


class SearchObservation(msgspec.Struct, kw_only=True):
    query: str
    sources: list[SourceView]


class ReadObservation(msgspec.Struct, kw_only=True):
    source: int
    title: str
    passages: list[SourceView]


class CollectionsObservation(msgspec.Struct, kw_only=True):
    collections: list[dict[str, str]]


class ToolError(msgspec.Struct, kw_only=True):
    error: str


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


TOOL_SPECS: tuple[ToolSpec, ...] = (
    ToolSpec(
        name=SEARCH,
        description=("Search the user's documents (hybrid keyword + semantic). Returns numbered sources; "
                     "cite them as [n]. Search again with other words if the results miss the answer."),
        parameters=_schema({
            "query": {"type": "string", "description": "what to look for, in natural language"},
            "k": {"type": "integer", "minimum": 1, "maximum": 20, "description": "how many sources (default 6)"},
            "collection": {"type": "string", "description": "only this collection (by name)"},
        }, ["query"]),
    ),
    ToolSpec(
        name=READ_DOCUMENT,
        description="Read the passages around a source (its neighbours in the same document).",
        parameters=_schema({
            "source": {"type": "integer", "minimum": 1, "description": "the source number [n]"},
            "before": {"type": "integer", "minimum": 0, "maximum": 5},
            "after": {"type": "integer", "minimum": 0, "maximum": 5},
        }, ["source"]),
    ),
    ToolSpec(
        name=LIST_COLLECTIONS,
        description="List the document collections that can be searched.",
        parameters=_schema({}, []),
    ),
)
