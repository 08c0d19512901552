"""Rate limits per API key and per inbound webhook source: 429 with ``Retry-After``.

Counting uses the maintained ``limits`` library with its sliding-window counter: two counters
per key and window (this window and the last, weighted), so a client cannot send twice the rate
across a window boundary as with a fixed window, at the cost of a fixed window (one Lua script,
one round trip to Redis per request) rather than a moving window's sorted set that grows with
the rate. With ``LEADSCORE_REDIS_URL`` every replica counts in the same Redis keys; without it
each process counts for itself (a limit per replica).

When Redis cannot be reached the request is served (fail open) and a warning is logged at most
once a minute: a rate limit protects the service, and refusing every request because the limit
cannot be counted would be the outage it is meant to prevent.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from redis.asyncio import ConnectionPool

from leadscore_api.config import Settings
from leadscore_api.errors import RateLimited

log = logging.getLogger("leadscore.rate_limits")

#: How long a request waits for Redis before it is served uncounted.
REDIS_TIMEOUT_SECONDS = 0.25
#: At most one warning this often while Redis stays unreachable.
WARN_EVERY_SECONDS = 60.0


@dataclass
class RateLimits:
    """The limits in force and where they are counted (``app.state.rate_limits``)."""

    limiter: SlidingWindowCounterRateLimiter
    api: Sequence[RateLimitItem]
    webhooks: Sequence[RateLimitItem]
    shared: bool
    #: The Redis connections, closed when the app stops (None: counted in memory).
    pool: ConnectionPool | None = None
    _warned_at: float = field(default=-math.inf)

    async def aclose(self) -> None:
        if self.pool is not None:
            await self.pool.disconnect()

    async def check_key(self, key_id: str) -> None:
        """Count one request of an API key; ``RateLimited`` when it is over a limit."""
        await self._hit(self.api, "api", key_id, "this API key")

    async def check_source(self, source: str) -> None:
        """Count one request to a webhook source; ``RateLimited`` when it is over a limit."""
        await self._hit(self.webhooks, "webhook", source, f"webhook source {source}")

    async def _hit(self, items: Sequence[RateLimitItem], kind: str, who: str, what: str) -> None:
        for item in items:
            try:
                allowed = await self.limiter.hit(item, kind, who)
                if allowed:
                    continue
                stats = await self.limiter.get_window_stats(item, kind, who)
            except Exception as exc:
                self._storage_failed(exc)
                return
            retry_after = max(1, math.ceil(stats.reset_time - time.time()))
            raise RateLimited(
                f"{what} is over its rate limit of {item}; retry in {retry_after} s",
                headers={"Retry-After": str(retry_after)},
            )

    def _storage_failed(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_SECONDS:
            self._warned_at = now
            log.warning("rate limits not counted, serving anyway: Redis failed: %r", exc)


def rate_limits_for(settings: Settings) -> RateLimits | None:
    """The limits of ``settings``; None when no limit is set (nothing to do per request)."""
    api = parse_many(settings.rate_limit_api) if settings.rate_limit_api else []
    webhooks = parse_many(settings.rate_limit_webhooks) if settings.rate_limit_webhooks else []
    if not api and not webhooks:
        return None
    storage: Storage
    pool: ConnectionPool | None = None
    if settings.redis_url:
        pool = ConnectionPool.from_url(
            settings.redis_url,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        )
        storage = RedisStorage(
            f"async+{settings.redis_url}",
            implementation="redispy",
            key_prefix=f"{settings.redis_key_prefix}:ratelimit",
            connection_pool=pool,  # type: ignore[arg-type]  # typed as scalar options only
        )
    else:
        storage = MemoryStorage()
    return RateLimits(
        limiter=SlidingWindowCounterRateLimiter(storage),
        api=api,
        webhooks=webhooks,
        shared=pool is not None,
        pool=pool,
    )
