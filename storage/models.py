"""Rows as msgspec Structs: what repositories return (and the API often serialises as is)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

import msgspec

__all__ = ["ApiKey", "Principal", "Role", "Tenant", "User"]

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
