"""The bare HTTP ceiling: a minimal Granian + Litestar app that answers `POST /v1/search` with a
search-sized JSON payload and does nothing else (no auth, no database, no cache, no embedding).

    QUARRY_CEILING_PAYLOAD=perf/reports/.../search-sample.json \
    granian --interface asgi --factory --workers 2 --loop uvloop perf.ceiling:app_factory

perf/run.py serves it with the same Granian options and worker count as the platform's API and
drives it with the same Locust search workload, so reports can say "X % of the HTTP ceiling on
this machine". The payload is a real search response captured from the platform in the same
run (QUARRY_CEILING_PAYLOAD), decoded once and encoded again on every request as the real
handler does; without it, a synthetic response of ten ~600-character hits.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import msgspec
from litestar import Litestar, get, post
from litestar.params import JSONBody

__all__ = ["app_factory", "synthetic_payload"]

PAYLOAD_ENV = "QUARRY_CEILING_PAYLOAD"


class SearchBody(msgspec.Struct):
    """The request is decoded and validated like the real one (same cost class)."""

    query: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]
    collections: list[str] | None = None
    k: int = 10
    mode: str = "hybrid"
    filter: dict[str, Any] | None = None
    cursor: str | None = None


def synthetic_payload(hits: int = 10, text_chars: int = 600) -> dict[str, Any]:
    text = ("lorem ipsum dolor sit amet consectetur " * (text_chars // 38 + 1))[:text_chars]
    return {"hits": [{
        "chunk_id": i, "document_id": f"00000000-0000-4000-8000-{i:012d}",
        "collection_id": "00000000-0000-4000-8000-000000000000", "title": f"document {i}",
        "uri": f"synthetic://{i}", "ord": i, "text": text, "heading": None, "page": None, "char_start": 0,
        "char_end": text_chars, "score": 1.0 / (60 + i), "vector_rank": i + 1, "keyword_rank": i + 1,
        "metadata": {},
    } for i in range(hits)], "next_cursor": None, "mode": "hybrid", "took_ms": 1.0}


def _payload() -> Any:
    path = os.environ.get(PAYLOAD_ENV)
    if path and Path(path).is_file():
        return msgspec.json.decode(Path(path).read_bytes())
    return synthetic_payload()


def app_factory() -> Litestar:
    payload = _payload()

    @post("/v1/search", status_code=200)
    async def search(data: JSONBody[SearchBody]) -> Any:
        return payload

    @get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return Litestar(route_handlers=[search, healthz], openapi_config=None)
