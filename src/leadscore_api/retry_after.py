"""``Retry-After`` headers (RFC 9110) as a bounded wait, for every outbound HTTP client.

Outbound webhooks (``delivery``) and the CRM connectors (``crm``) both honour a receiver's
``Retry-After``; one parser serves both, so a header means the same wait to each.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

#: The longest wait a ``Retry-After`` can impose: a receiver's header (or a proxy's mistake)
#: must not hold messages back for longer than a day.
MAX_RETRY_AFTER_SECONDS = 86_400.0


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """A ``Retry-After`` header as seconds from ``now``: it is either a number of seconds or an
    HTTP date; None when it is missing or neither (``nan``, ``inf`` included). Never negative,
    at most :data:`MAX_RETRY_AFTER_SECONDS`."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(MAX_RETRY_AFTER_SECONDS, max(0.0, seconds))
