"""API fixtures: a client over create_app(custom settings)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from core.settings import Settings


@pytest.fixture
def app_client() -> Callable[[Settings], AbstractAsyncContextManager[AsyncTestClient]]:  # type: ignore[type-arg]
    """A test client over create_app(settings), e.g. with a broken Redis URL."""

    @asynccontextmanager
    async def factory(settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
        async with AsyncTestClient(app=create_app(settings)) as test_client:
            yield test_client

    return factory
