from __future__ import annotations

from typing import Annotated

import msgspec

from storage.models import Collection

CollectionName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Description = Annotated[str, msgspec.Meta(max_length=2000)]


class CreateCollection(msgspec.Struct, forbid_unknown_fields=True):
    name: CollectionName
    description: Description = ""


class UpdateCollection(msgspec.Struct, forbid_unknown_fields=True):
    name: CollectionName | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType = msgspec.UNSET


class CollectionPage(msgspec.Struct):
    items: list[Collection]
    next_cursor: str | None
