"""Token usage accounting off the chat's path: each API process adds up its chats' tokens in
memory and writes them to Postgres about once a second, one upsert per tenant and month.

Why: every chat of a tenant updates the same `llm_usage` row. Written per chat, hundreds of
concurrent chats queue on that row lock, holding pooled connections while they wait. Batched,
the row sees one short transaction per second per process. What is not yet written counts
towards the budget in this process (`pending`); a crash loses at most one interval of counts.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from datetime import date
from uuid import UUID

import asyncpg

from storage.repositories.usage import add_usage, month_of
from storage.tenancy import tenant_tx

__all__ = ["UsageRecorder"]

log = logging.getLogger("quarry.chat")


class UsageRecorder:
    def __init__(self, pool: asyncpg.Pool, interval_s: float = 1.0) -> None:
        self.pool = pool
        self.interval_s = interval_s
        # (tenant, month) -> [prompt tokens, completion tokens, chats]
        self._pending: dict[tuple[UUID, date], list[int]] = defaultdict(lambda: [0, 0, 0])
        self._flusher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def add(self, tenant_id: UUID, prompt_tokens: int, completion_tokens: int) -> None:
        entry = self._pending[(tenant_id, month_of())]
        entry[0] += max(prompt_tokens, 0)
        entry[1] += max(completion_tokens, 0)
        entry[2] += 1
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_while_pending(), name="quarry-usage-flush")

    def pending(self, tenant_id: UUID, month: date) -> int:
        """Tokens counted here but not written yet (the budget check adds them)."""
        entry = self._pending.get((tenant_id, month))
        return entry[0] + entry[1] if entry else 0

    async def _flush_while_pending(self) -> None:
        # No await between the emptiness check and the return: an add() either lands before
        # the check (another round) or after the task is done (it starts a new one).
        while True:
            await asyncio.sleep(self.interval_s)
            await self.flush()
            if not self._pending:
                return

    async def flush(self) -> None:
        """Write what is pending; what fails to write stays pending for the next flush."""
        async with self._lock:
            batch, self._pending = self._pending, defaultdict(lambda: [0, 0, 0])
            for (tenant_id, month), (prompt, completion, chats) in batch.items():
                try:
                    async with tenant_tx(self.pool, tenant_id, local_settings={"synchronous_commit": "off"}) as conn:
                        await add_usage(conn, tenant_id, month, prompt, completion, requests=chats)
                except Exception:
                    log.warning("could not record LLM usage of a tenant; retrying with the next flush")
                    entry = self._pending[(tenant_id, month)]
                    entry[0] += prompt
                    entry[1] += completion
                    entry[2] += chats

    async def aclose(self) -> None:
        """Stop the timer and write the rest (application shutdown)."""
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self.flush()
