"""A client that runs the app on the test's own event loop.

Litestar's AsyncTestClient runs the app in a portal thread and handles one request at a time
(each call blocks the test loop until the response is complete), so `asyncio.gather` through
it is not concurrent. Serving tests need real interleaving (parallel requests racing for a
rate limit, a pool held while a request waits), so they drive the ASGI app with httpx's
transport on the current loop, lifespan included.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from litestar import Litestar

from api.app import create_app
from core.settings import Settings


@asynccontextmanager
async def concurrent_client(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Litestar]]:
    app = create_app(settings)
    async with app.lifespan(), httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                                 base_url="http://testserver.local") as client:
        yield client, app
