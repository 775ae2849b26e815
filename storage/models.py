"""Rows as msgspec Structs: what repositories return (and the API often serialises as is)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

import msgspec

__all__ = ["ApiKey", "ChunkRow", "Collection", "Document", "DocumentStatus", "Principal", "Role", "SearchHit",
           "Tenant", "User"]

Role = Literal["admin", "member", "reader"]


class Tenant(msgspec.Struct, kw_only=True):
    id: UUID
    name: str
    is_operator: bool
    plan: str
    created_at: datetime


class User(msgspec.Struct, kw_only=True):
    id: UUID
    tenant_id: UUID
    email: str
    name: str
    role: Role
    created_at: datetime


class ApiKey(msgspec.Struct, kw_only=True):
    """A key as listed: the secret itself is never stored, only its hash."""

    id: UUID
    tenant_id: UUID
    user_id: UUID | None
    name: str
    prefix: str
    role: Role
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who is calling: resolved from an API key on every request."""

    key_id: UUID
    tenant_id: UUID
    tenant_name: str
    is_operator: bool
    role: Role
    user_id: UUID | None
    prefix: str


DocumentStatus = Literal["queued", "processing", "ready", "failed"]


class Collection(msgspec.Struct, kw_only=True):
    id: UUID
    tenant_id: UUID
    name: str
    description: str
    version: int
    active_embedder: str
    created_at: datetime


class Document(msgspec.Struct, kw_only=True):
    id: UUID
    tenant_id: UUID
    collection_id: UUID
    source_id: UUID | None
    title: str
    uri: str | None
    mime_type: str
    content_hash: str | None
    size_bytes: int
    status: DocumentStatus
    error: str | None
    attempts: int
    chunk_count: int
    metadata: dict[str, object]
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    timings: dict[str, float] = {}


class ChunkRow(msgspec.Struct, kw_only=True):
    """A chunk to write (ids are assigned by the database)."""

    ord: int
    text: str
    heading: str | None
    page: int | None
    char_start: int
    char_end: int
    token_count: int


class SearchHit(msgspec.Struct, kw_only=True):
    chunk_id: int
    document_id: UUID
    collection_id: UUID
    title: str
    uri: str | None
    ord: int
    text: str
    heading: str | None
    page: int | None
    char_start: int
    char_end: int
    score: float
    vector_rank: int | None
    keyword_rank: int | None
    metadata: dict[str, object]
    highlight: str | None = None
