"""Request/response bodies of the admin endpoints."""

from __future__ import annotations

from typing import Annotated

import msgspec

from storage.models import ApiKey, Role, Tenant, User

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=63)]
Email = Annotated[str, msgspec.Meta(pattern=r"^[^@\s]+@[^@\s]+$", max_length=254)]


class CreateTenant(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    plan: Annotated[str, msgspec.Meta(min_length=1, max_length=63)] = "default"


class CreateUser(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    role: Role
    name: Annotated[str, msgspec.Meta(max_length=200)] = ""


class CreateKey(msgspec.Struct, forbid_unknown_fields=True):
    role: Role
    name: Annotated[str, msgspec.Meta(max_length=200)] = ""
    user_id: msgspec.UnsetType | str = msgspec.UNSET


class NewKey(msgspec.Struct):
    """The only response that ever contains a key in clear: store it now."""

    key: str
    api_key: ApiKey


class NewTenant(msgspec.Struct):
    tenant: Tenant
    admin_key: NewKey


class TenantPage(msgspec.Struct):
    items: list[Tenant]
    next_cursor: str | None


class UserPage(msgspec.Struct):
    items: list[User]
    next_cursor: str | None


class KeyList(msgspec.Struct):
    items: list[ApiKey]
