"""Build embedders from their registered specs (framework-free; no Dagster here).

A collection's active embedder is a name; `EmbedderResolver` turns it into an `Embedder`:
the process's default embedder when the names match, else one built from the spec stored
in the `embedders` table (API keys come from this process's settings, never the database).
"""

from __future__ import annotations

import asyncpg

from core.settings import Settings
from rag.embedders import Embedder, MiniLMEmbedder, OpenAIEmbedder
from storage.repositories import embedders as embedder_repo
from storage.repositories.embedders import EmbedderSpec

__all__ = ["EmbedderResolver", "UnknownEmbedder", "embedder_from_spec", "spec_of"]


class UnknownEmbedder(LookupError):
    pass


def embedder_from_spec(spec: EmbedderSpec, settings: Settings, *, for_queries: bool = False) -> Embedder:
    if spec.kind == "minilm":
        return MiniLMEmbedder.from_settings(settings, for_queries=for_queries)
    return OpenAIEmbedder(
        base_url=spec.base_url or settings.openai_base_url, model=spec.model, dim=spec.dim,
        api_key=settings.openai_api_key, timeout_s=settings.openai_timeout_s,
        max_retries=settings.openai_max_retries,
    )


def spec_of(embedder: Embedder, *, base_url: str | None = None) -> EmbedderSpec:
    """The spec that rebuilds `embedder` (for registering a backfill's target)."""
    if isinstance(embedder, MiniLMEmbedder):
        return EmbedderSpec(name=embedder.name, kind="minilm", dim=embedder.dim)
    if isinstance(embedder, OpenAIEmbedder):
        return EmbedderSpec(name=embedder.name, kind="openai", model=embedder.model, dim=embedder.dim,
                            base_url=base_url)
    raise UnknownEmbedder(f"embedder {embedder.name!r} cannot be registered (test-only or unknown kind)")


class EmbedderResolver:
    """Embedders by name, built once per resolver; `extra` are ready-made ones (tests);
    `for_queries`: the API's resolver (embedders built for search queries)."""

    def __init__(self, default: Embedder, settings: Settings, extra: list[Embedder] | None = None, *,
                 for_queries: bool = False) -> None:
        self.settings = settings
        self.for_queries = for_queries
        self.default = default
        self._by_name: dict[str, Embedder] = {default.name: default}
        self._owned: list[Embedder] = []
        for embedder in extra or []:
            self._by_name[embedder.name] = embedder

    async def get(self, conn: asyncpg.Connection, name: str) -> Embedder:
        if name not in self._by_name:
            spec = await embedder_repo.get_spec(conn, name)
            if spec is None:
                raise UnknownEmbedder(f"the embedder {name!r} is not registered on this platform")
            embedder = embedder_from_spec(spec, self.settings, for_queries=self.for_queries)
            self._by_name[name] = embedder
            self._owned.append(embedder)
        return self._by_name[name]

    async def aclose(self) -> None:
        for embedder in self._owned:
            await embedder.aclose()
        self._owned.clear()
