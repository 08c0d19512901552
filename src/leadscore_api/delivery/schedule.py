"""When to try a message again: the configured schedule, jitter and the receiver's Retry-After.

``LEADSCORE_DELIVERY_RETRY_DELAYS`` lists, in seconds, when each attempt is due counted from the
first one (default ``0,5,300,1800,7200,18000,36000,50400,72000,86400``: now, 5 s, 5 min, … 24 h).
After attempt *n* fails, attempt *n+1* waits the gap between the two offsets, stretched or
shrunk by up to ±20 % so that many messages failing together do not retry in lock-step (a
thundering herd on a receiver that just came back). When the list is used up, the message is
failed (dead letter). A ``Retry-After`` from the receiver is honoured when it asks for longer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

JITTER = 0.2


def next_delay(
    attempts_done: int,
    delays: Sequence[float],
    *,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds to wait before the next attempt, or ``None`` when the schedule is used up.

    ``attempts_done`` counts the attempts of the current schedule, the failed one included.
    """
    if attempts_done >= len(delays):
        return None
    gap = max(delays[attempts_done] - delays[attempts_done - 1], 0.0) if attempts_done else 0.0
    rand = rng if rng is not None else random
    delay = gap * (1.0 + rand.uniform(-JITTER, JITTER))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay
