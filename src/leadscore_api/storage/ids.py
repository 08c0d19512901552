"""Identifiers for rows the service creates (leads, API keys, internal events)."""

from __future__ import annotations

import os
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(prefix: str) -> str:
    """``prefix_`` + a ULID (48-bit millisecond time, 80 random bits).

    Time-ordered ids keep primary-key indexes append-mostly and make ids readable in logs; the
    random part makes them unguessable enough that an id alone reveals nothing.
    """
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"
