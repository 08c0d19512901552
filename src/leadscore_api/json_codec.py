"""How JSON columns and request bodies are encoded and decoded.

Every ingested event writes about a dozen JSON values (the event's properties, the lead's
state under each ruleset, history rows with explanations); with the standard ``json`` encoder
that was the largest single cost of a batch after scoring itself. orjson encodes the same
values several times faster, so it writes; the standard library reads, because orjson parses
integers beyond 64 bits as floats and a CRM's large numeric id must come back exactly (measured:
orjson's parser gained nothing here on top of its encoder).

orjson cannot encode integers beyond 64 bits either: those values are written by ``json``.
``NaN`` and ``Infinity`` are not JSON; :func:`parse` refuses them in request bodies (the
standard parser would let them in), and orjson writes ``null`` should code ever produce one.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS


def dumps(value: Any) -> str:
    """``value`` as compact JSON text."""
    try:
        return orjson.dumps(value, option=_OPTIONS).decode()
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(value, separators=(",", ":"))


def loads(text: str | bytes) -> Any:
    """A stored JSON value."""
    return json.loads(text)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse(text: str | bytes) -> Any:
    """A request body: strict JSON, so ``NaN`` and ``Infinity`` are errors, not numbers."""
    return json.loads(text, parse_constant=_refuse_constant)
