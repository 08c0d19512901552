"""Small input conveniences shared by request models."""

from __future__ import annotations

from typing import Any


def one_or_many(value: Any) -> Any:
    """Accept ``"hot"`` where ``["hot"]`` is meant (query strings and hand-written JSON)."""
    return [value] if isinstance(value, str) else value
