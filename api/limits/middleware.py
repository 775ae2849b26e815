"""The rate-limit middleware: runs after authentication, before the handler.

Every limited response carries ``RateLimit-Limit``, ``RateLimit-Remaining`` and
``RateLimit-Reset`` (seconds until the quota is full again) for the bucket that binds (the
one with the fewest requests left), plus ``RateLimit-Policy``; a refused request is a 429
problem with ``Retry-After`` (seconds until one more request is allowed). When Redis cannot
be reached the setting decides: fail open (serve, no headers) or closed (503).

Busy bucket sets are served from per-process token leases (storage.ratelimit.TokenLeases): one
Redis call per lease of up to 32 tokens instead of one per request; limits below 200/min stay
exact per request.
"""

from __future__ import annotations

import math
from typing import Any
from uuid import UUID

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api.limits.classes import classify
from api.limits.policy import LimitsPolicy
from core.errors import RateLimited, Unavailable
from core.metrics import RATE_LIMIT_REJECTIONS, RATE_LIMIT_UNAVAILABLE
from storage.caches.guard import RedisGuard, RedisUnavailable
from storage.models import Principal
from storage.ratelimit import Bucket, Decision, GcraLimiter, TokenLeases

__all__ = ["RateLimiter", "rate_limit_middleware"]

_PERIOD_S = 60.0


class RateLimiter:
    def __init__(self, guard: RedisGuard, policy: LimitsPolicy, *, fail_mode: str, enabled: bool = True) -> None:
        self.guard = guard
        self.policy = policy
        self.fail_mode = fail_mode
        self.enabled = enabled
        self.gcra = GcraLimiter(guard.redis)
        self.leases = TokenLeases(lambda buckets, cost: guard.call(lambda _redis: self.gcra.hit(buckets, cost)))

    def buckets(self, tenant_id: UUID, key_id: UUID, rate_class: str, per_key: int, per_tenant: int) -> list[Bucket]:
        # One hash tag per tenant: both keys live in the same Redis Cluster slot, as a script needs.
        prefix = f"quarry:rl:{{{tenant_id}}}:{rate_class}"
        found = []
        if per_key > 0:
            found.append(Bucket(f"{prefix}:key:{key_id}", per_key, _PERIOD_S))
        if per_tenant > 0:
            found.append(Bucket(f"{prefix}:tenant", per_tenant, _PERIOD_S))
        return found

    async def check(self, principal: Principal, rate_class: str) -> Decision | None:
        """The decision, or None when nothing limits this request (unlimited, or Redis is
        down and the mode is fail-open). Raises Unavailable when down and fail-closed."""
        limit = await self.policy.limit_for(principal.tenant_id, rate_class)
        buckets = self.buckets(principal.tenant_id, principal.key_id, rate_class, limit.key, limit.tenant)
        if not buckets:
            return None
        try:
            # A lease still held here is used while Redis is down, until it expires.
            return await self.leases.hit(buckets)
        except RedisUnavailable:
            RATE_LIMIT_UNAVAILABLE.labels(self.fail_mode).inc()
            if self.fail_mode == "closed":
                exc = Unavailable("rate limiting is unavailable (Redis is down); try again shortly")
                exc.headers["Retry-After"] = "1"
                raise exc from None
            return None


def decision_headers(decision: Decision) -> dict[str, str]:
    state = decision.binding
    return {
        "RateLimit-Limit": str(state.bucket.limit),
        "RateLimit-Remaining": str(max(0, state.remaining)),
        "RateLimit-Reset": str(max(0, math.ceil(state.reset_s))),
        "RateLimit-Policy": ", ".join(f"{s.bucket.limit};w={int(s.bucket.period_s)}" for s in decision.states),
    }


def _scope_of(bucket: Bucket) -> str:
    return "tenant" if bucket.key.endswith(":tenant") else "key"


def rate_limit_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        principal: Any = scope.get("user")
        limiter: RateLimiter | None = getattr(scope["app"].state, "rate_limiter", None)
        if scope["type"] != ScopeType.HTTP or not isinstance(principal, Principal) or limiter is None \
                or not limiter.enabled:
            await app(scope, receive, send)
            return
        rate_class = classify(scope.get("route_handler"), scope.get("method", "GET"), scope["path"])
        decision = await limiter.check(principal, rate_class) if rate_class else None
        if decision is None:
            await app(scope, receive, send)
            return
        headers = decision_headers(decision)
        if not decision.allowed:
            binding = decision.binding
            RATE_LIMIT_REJECTIONS.labels(rate_class, _scope_of(binding.bucket)).inc()
            exc = RateLimited(
                f"rate limit exceeded for {rate_class!r} requests ({binding.bucket.limit} per minute per "
                f"{_scope_of(binding.bucket)}); retry after {decision.retry_after_s} s",
                rate_class=rate_class, scope=_scope_of(binding.bucket),
            )
            exc.headers.update(headers, **{"Retry-After": str(decision.retry_after_s)})
            raise exc
        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*(message.get("headers") or []), *raw]
            await send(message)

        await app(scope, receive, send_with_headers)

    return middleware
