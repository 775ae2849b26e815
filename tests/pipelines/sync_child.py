"""A sync run in a child process, slowed down so a test can kill it mid-way (SIGKILL)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from uuid import UUID

from core.settings import load_settings
from pipelines.embedding import EmbedderResolver
from pipelines.sync import SyncDeps, sync_parser, sync_source
from rag.chunking import HFTokenizer
from rag.embedders import HashingEmbedder, tokenizer_path
from storage.db import create_pool


class SlowHashing(HashingEmbedder):
    async def embed(self, texts):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.25)
        return self.embed_sync(texts)


async def main(app_url: str, tenant_id: str, source_id: str, roots: str, scratch: str) -> None:
    settings = load_settings(environ={}, dotenv=None, connector_folder_roots=roots)
    pool = await create_pool(app_url, min_size=1, max_size=3)
    embedder = SlowHashing()
    async with sync_parser(settings) as parser:
        deps = SyncDeps(pool=pool, settings=settings, tokenizer=HFTokenizer.from_file(tokenizer_path()),
                        parser=parser, embedders=EmbedderResolver(embedder, settings), scratch_dir=Path(scratch))
        print("started", flush=True)
        await sync_source(deps, UUID(tenant_id), UUID(source_id))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
