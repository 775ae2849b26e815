from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec

from storage.models import Document

TextFormat = Literal["txt", "md", "html"]


class TextDocument(msgspec.Struct, forbid_unknown_fields=True):
    """A document given as JSON text instead of a file."""

    text: Annotated[str, msgspec.Meta(min_length=1)]
    title: Annotated[str, msgspec.Meta(max_length=500)] = ""
    uri: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)] | None = None
    """Identity within the collection: uploading the same uri again replaces the document."""
    format: TextFormat = "txt"
    metadata: dict[str, Any] = {}


class Accepted(msgspec.Struct):
    document_id: UUID
    status: str
    action: Literal["created", "replaced", "unchanged", "pending"]
    job_id: str | None
    """None when nothing needs doing (the same content is already indexed)."""
    filename: str | None = None


class AcceptedBatch(msgspec.Struct):
    documents: list[Accepted]


class DocumentPage(msgspec.Struct):
    items: list[Document]
    next_cursor: str | None
