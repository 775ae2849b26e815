"""LLM token usage per tenant and calendar month (UTC): the monthly budget reads and adds here.

Run inside `tenant_tx`. Adding is one upsert, so concurrent writers add up exactly (the API
batches its chats' usage per process: `api/chat/usage.py`).
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import asyncpg
import msgspec

__all__ = ["MonthUsage", "add_usage", "month_of", "month_usage", "next_month"]


class MonthUsage(msgspec.Struct, kw_only=True):
    month: date
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def month_of(moment: datetime | None = None) -> date:
    moment = moment or datetime.now(UTC)
    return moment.astimezone(UTC).date().replace(day=1)


def next_month(month: date) -> date:
    return month.replace(year=month.year + 1, month=1) if month.month == 12 else month.replace(month=month.month + 1)


async def month_usage(conn: asyncpg.Connection, month: date) -> MonthUsage:
    """The current tenant's usage in `month` (zero when it has none yet)."""
    row = await conn.fetchrow(
        "SELECT prompt_tokens, completion_tokens, requests FROM llm_usage "
        "WHERE tenant_id = quarry_current_tenant() AND month = $1",
        month,
    )
    if row is None:
        return MonthUsage(month=month)
    return MonthUsage(month=month, prompt_tokens=row["prompt_tokens"], completion_tokens=row["completion_tokens"],
                      requests=row["requests"])


async def add_usage(
    conn: asyncpg.Connection, tenant_id: object, month: date, prompt_tokens: int, completion_tokens: int,
    requests: int = 1,
) -> None:
    await conn.execute(
        """INSERT INTO llm_usage (tenant_id, month, prompt_tokens, completion_tokens, requests)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (tenant_id, month) DO UPDATE SET
               prompt_tokens = llm_usage.prompt_tokens + EXCLUDED.prompt_tokens,
               completion_tokens = llm_usage.completion_tokens + EXCLUDED.completion_tokens,
               requests = llm_usage.requests + EXCLUDED.requests,
               updated_at = now()""",
        tenant_id, month, max(prompt_tokens, 0), max(completion_tokens, 0), max(requests, 0),
    )
