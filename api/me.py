"""Who am I: the principal behind the calling key (any role)."""

from __future__ import annotations

from uuid import UUID

from litestar import Controller, Request, get
from litestar.datastructures import State

from api import paths
from storage.models import Principal


class MeController(Controller):
    tags = ["auth"]

    @get(paths.ME, operation_id="whoami")
    async def whoami(self, request: Request[Principal, UUID, State]) -> Principal:
        """The tenant, role and key prefix of the calling API key."""
        return request.user
