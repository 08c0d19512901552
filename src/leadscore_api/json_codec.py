"""How JSON columns and request bodies are encoded and decoded.

Every ingested event writes about a dozen JSON values (the event's properties, the lead's
state under each ruleset, history rows with explanations) and reads half as many back. With
the standard ``json`` module that is the largest single cost of a batch after scoring itself;
orjson parses a lead's state several times faster.

orjson handles integers only up to 64 bits: it cannot encode bigger ones, and parses them as
floats. A CRM's large numeric id must come back exactly, so values with such integers go
through ``json`` both ways (on reading, any run of 20 digits sends the text to ``json``).
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


#: Digits mapped to "0", so that one substring search finds a run of 20 digits (cheaper than
#: a regular expression over every stored state).
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_TWENTY_DIGITS = b"0" * 20


def loads(text: str | bytes | bytearray | memoryview) -> Any:
    """A stored JSON value (lenient: accepts what ``json.dumps`` once wrote)."""
    data = text.encode() if isinstance(text, str) else bytes(text)
    if _TWENTY_DIGITS not in data.translate(_DIGITS_TO_ZERO):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse(text: str | bytes) -> Any:
    """A request body: strict JSON, so ``NaN`` and ``Infinity`` are errors, not numbers.

    JSON nested deeper than the interpreter's recursion limit (about 1,000 levels) is a
    ``ValueError`` like any other unreadable body, not a ``RecursionError`` escaping as a 500.
    """
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None
