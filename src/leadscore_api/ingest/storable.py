"""What input the databases can store, checked once where input enters (docs/errors.md).

PostgreSQL cannot store the character NUL (U+0000) in ``text`` or ``jsonb``, and no database
can store a lone UTF-16 surrogate (``"\\ud800"`` in JSON): it has no UTF-8 form, so PostgreSQL
refuses it and SQLite stores bytes that later fail to read back. A number outside the float
range (``1e400``) parses as infinity, which JSON cannot carry and scores as something else.
Such values are refused where they come in, naming the field, rather than failing the whole
transaction (a batch's good events with it) or poisoning every later read of the lead.

Other control characters are kept in free text (a tab or a newline in a form answer is
legitimate); identifiers (event ids, emails, external ids, sources) refuse them all.
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson

#: Characters no database of ours can store.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
#: Characters an identifier may not hold: the above plus every C0/C1 control and DEL.
_NOT_IN_IDENTIFIERS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
#: Raw JSON that may parse into an unstorable value: a ``\\u0000`` or surrogate escape, a
#: number with a three-digit exponent, or the ``NaN``/``Infinity`` the standard parser (and so
#: FastAPI) accepts. A body without any of these needs no walk at all.
SUSPICIOUS_JSON = re.compile(
    rb"\\u(?:0000|[dD][89abcdefABCDEF])|[0-9][eE][+-]?[0-9]{3}|NaN|Infinity"
)

#: Deepest nesting of objects and arrays accepted inside a value (properties, raw payloads):
#: orjson's own limit for writing JSON, which is what stores these values.
MAX_DEPTH = 254


class UnstorableValue(ValueError):
    """A value no database can store; ``path`` says where inside the field it is."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored, or None."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "contains the NUL character (\\u0000), which cannot be stored"
    return "contains a lone UTF-16 surrogate, which is not Unicode text"


def identifier_problem(text: str) -> str | None:
    """Why ``text`` cannot be an identifier (id, email, source), or None."""
    if _NOT_IN_IDENTIFIERS.search(text) is None:
        return None
    return text_problem(text) or "contains a control character"


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    # A name may itself hold a surrogate; the path goes into an answer, which must be UTF-8.
    key = key.encode("utf-8", "backslashreplace").decode("utf-8")
    return f"{path}.{key}" if path else key


def printable_id(value: Any) -> str | None:
    """An item's id to echo in an answer, or None when it is not text that can be shown."""
    if isinstance(value, str) and identifier_problem(value) is None:
        return value
    return None


def find_problem(value: Any, path: str = "", depth: int = 0) -> tuple[str, str] | None:
    """The first place in a JSON-like value that cannot be stored, as (path, why), or None."""
    if isinstance(value, str):
        problem = text_problem(value)
        return (path, problem) if problem else None
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return (path, "is not a finite number (outside the range of a double)")
    if isinstance(value, dict | list):
        if depth >= MAX_DEPTH:
            return (path, f"is nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                where = _join(path, str(key))
                if isinstance(key, str) and (problem := text_problem(key)):
                    return (where, f"the name {problem}")
                found = find_problem(item, where, depth + 1)
                if found:
                    return found
        else:
            for index, item in enumerate(value):
                found = find_problem(item, _join(path, index), depth + 1)
                if found:
                    return found
    return None


def check_storable(value: Any) -> Any:
    """``value`` unchanged, or ``UnstorableValue`` naming where it cannot be stored.

    Every event pays this for its properties, attributes and raw payload, so the common case
    is one ``orjson`` encoding (about a microsecond): it fails on a surrogate, on nesting
    past 254 levels and on integers past 64 bits, writes a NUL as ``\\u0000`` and an infinity
    as ``null``. Only then is the value walked in Python, to name the place or find nothing.
    """
    if not value:
        return value
    try:
        encoded = orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        encoded = b"null"
    if b"null" not in encoded and b"\\u0000" not in encoded:
        return value
    found = find_problem(value)
    if found is not None:
        raise UnstorableValue(*found)
    return value


def check_identifier(value: str | None) -> str | None:
    """``value`` unchanged, or ``ValueError`` when it holds control characters."""
    if value is not None and (problem := identifier_problem(value)):
        raise ValueError(problem)
    return value
