"""The part of SOQL the Salesforce stand-in understands, checked as strictly as Salesforce does.

SELECT fields (``Contact.Email`` parent paths, one level of child subquery) FROM object
[WHERE cond AND cond ...] [ORDER BY path [ASC|DESC], ...] [LIMIT n]; conditions are
``path op literal`` and ``path IN (literals)``. Strings must be quoted with SOQL's escapes,
dateTime values must be unquoted literals, booleans unquoted ``true``/``false``: a connector
that gets any of this wrong gets Salesforce's MALFORMED_QUERY / INVALID_FIELD answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any


class SoqlError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_TOKEN = re.compile(
    r"""\s*(?:
    (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:Z|[+-]\d{2}:\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2})
  | (?P<number>-?\d+(?:\.\d+)?)
  | (?P<op>!=|>=|<=|=|<|>)
  | (?P<punct>[(),])
  | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.VERBOSE,
)
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}


@dataclass
class Query:
    object: str
    fields: list[str]
    subqueries: list[Query] = field(default_factory=list)
    where: list[tuple[str, str, Any]] = field(default_factory=list)
    order: list[tuple[str, bool]] = field(default_factory=list)
    limit: int | None = None


def _unquote(token: str) -> str:
    body = token[1:-1]
    out, i = [], 0
    while i < len(body):
        if body[i] == "\\":
            nxt = body[i + 1]
            if nxt not in _ESCAPES:
                raise SoqlError("MALFORMED_QUERY", f"Invalid string literal: {token}")
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


def tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise SoqlError("MALFORMED_QUERY", f"unexpected token at: {text[pos : pos + 20]!r}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.i = 0

    def peek(self, offset: int = 0) -> tuple[str, str]:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else ("end", "")

    def take(self) -> tuple[str, str]:
        token = self.peek()
        self.i += 1
        return token

    def keyword(self, word: str) -> bool:
        kind, value = self.peek()
        if kind == "name" and value.upper() == word:
            self.i += 1
            return True
        return False

    def expect(self, word: str) -> None:
        if not self.keyword(word):
            raise SoqlError("MALFORMED_QUERY", f"expecting '{word}', found '{self.peek()[1]}'")

    def query(self) -> Query:
        self.expect("SELECT")
        fields: list[str] = []
        subqueries: list[Query] = []
        while True:
            if self.peek() == ("punct", "("):
                self.take()
                subqueries.append(self.query())
                if self.take() != ("punct", ")"):
                    raise SoqlError("MALFORMED_QUERY", "unclosed subquery")
            else:
                kind, value = self.take()
                if kind != "name" or value.upper() in ("FROM", "WHERE"):
                    raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{value}'")
                fields.append(value)
            if self.peek() != ("punct", ","):
                break
            self.take()
        self.expect("FROM")
        kind, obj = self.take()
        if kind != "name":
            raise SoqlError("MALFORMED_QUERY", "expecting an object name after FROM")
        query = Query(obj, fields, subqueries)
        if self.keyword("WHERE"):
            while True:
                query.where.append(self.condition())
                if not self.keyword("AND"):
                    break
        if self.keyword("ORDER"):
            self.expect("BY")
            while True:
                kind, path = self.take()
                if kind != "name":
                    raise SoqlError("MALFORMED_QUERY", "expecting a field after ORDER BY")
                descending = False
                if self.keyword("DESC"):
                    descending = True
                else:
                    self.keyword("ASC")
                query.order.append((path, descending))
                if self.peek() != ("punct", ","):
                    break
                self.take()
        if self.keyword("LIMIT"):
            kind, value = self.take()
            if kind != "number":
                raise SoqlError("MALFORMED_QUERY", "LIMIT needs a number")
            query.limit = int(value)
        return query

    def condition(self) -> tuple[str, str, Any]:
        kind, path = self.take()
        if kind != "name":
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{path}'")
        if self.keyword("IN"):
            if self.take() != ("punct", "("):
                raise SoqlError("MALFORMED_QUERY", "expecting '(' after IN")
            values = []
            while True:
                values.append(self.literal())
                token = self.take()
                if token == ("punct", ")"):
                    break
                if token != ("punct", ","):
                    raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{token[1]}'")
            return path, "IN", values
        kind, op = self.take()
        if kind != "op":
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{op}'")
        return path, op, self.literal()

    def literal(self) -> Any:
        kind, value = self.take()
        if kind == "string":
            return _unquote(value)
        if kind == "datetime":
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        if kind == "date":
            return date.fromisoformat(value)
        if kind == "number":
            return float(value)
        if kind == "name" and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if kind == "name" and value.lower() == "null":
            return None
        raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{value}'")


def parse(text: str) -> Query:
    parser = _Parser(tokenize(text))
    query = parser.query()
    if parser.peek()[0] != "end":
        raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{parser.peek()[1]}'")
    return query


@dataclass
class Schema:
    """What the evaluator needs to know about the stand-in's objects."""

    #: object -> field -> type ("id", "string", "email", "bool", "number", "datetime", "date",
    #: "reference:<Object>", "picklist")
    fields: dict[str, dict[str, str]]
    #: (parent object, child relationship name) -> (child object, the child's reference field)
    children: dict[tuple[str, str], tuple[str, str]]
    #: object -> live records (id -> fields)
    records: Callable[[str], dict[str, dict[str, Any]]]


def _field_type(schema: Schema, obj: str, path: str) -> tuple[str, str]:
    """(object owning the last segment, its type) for ``Field`` or ``Parent.Field``."""
    parts = path.split(".")
    current = obj
    for relation in parts[:-1]:
        ref = next(
            (
                t
                for f, t in schema.fields.get(current, {}).items()
                if t.startswith("reference:") and f.lower() == relation.lower() + "id"
            ),
            None,
        )
        if ref is None:
            raise SoqlError(
                "INVALID_FIELD",
                f"Didn't understand relationship '{relation}' in field path. If you are "
                "attempting to use a custom relationship, be sure to append the '__r' after "
                "the custom relationship name.",
            )
        current = ref.split(":", 1)[1]
    name = parts[-1]
    types = {f.lower(): t for f, t in schema.fields.get(current, {}).items()}
    if name.lower() not in types:
        raise SoqlError("INVALID_FIELD", f"No such column '{name}' on entity '{current}'.")
    return current, types[name.lower()]


def _canonical(schema: Schema, obj: str, name: str) -> str:
    for field_name in schema.fields[obj]:
        if field_name.lower() == name.lower():
            return field_name
    return name


def _resolve(schema: Schema, obj: str, record: dict[str, Any], path: str) -> Any:
    parts = path.split(".")
    current_obj, current = obj, record
    for relation in parts[:-1]:
        ref_field = _canonical(schema, current_obj, relation + "Id")
        target = schema.fields[current_obj][ref_field].split(":", 1)[1]
        ref_id = current.get(ref_field)
        parent = schema.records(target).get(ref_id) if ref_id else None
        if parent is None:
            return None
        current_obj, current = target, parent
    return current.get(_canonical(schema, current_obj, parts[-1]))


def _check_literal(path: str, kind: str, value: Any) -> None:
    if value is None:
        return
    wants = {
        "datetime": datetime,
        "date": date,
        "bool": bool,
        "number": float,
    }.get(kind, str)
    ok = False if kind == "date" and isinstance(value, datetime) else isinstance(value, wants)
    if not ok:
        if kind in ("datetime", "date"):
            raise SoqlError(
                "INVALID_QUERY_FILTER_OPERATOR",
                f"value of filter criterion for field '{path}' must be of type {kind} and "
                "should not be enclosed in quotes",
            )
        raise SoqlError(
            "INVALID_QUERY_FILTER_OPERATOR",
            f"value of filter criterion for field '{path}' must be of type {kind}",
        )


def _matches(op: str, actual: Any, expected: Any) -> bool:
    if isinstance(actual, str) and isinstance(expected, str):
        actual, expected = actual.lower(), expected.lower()  # SOQL compares text case-insensitively
    if op == "IN":
        return any(_matches("=", actual, value) for value in expected)
    if op == "=":
        return bool(actual == expected)
    if op == "!=":
        return bool(actual != expected)
    if actual is None or expected is None:
        return False
    return bool(
        {
            ">": actual > expected,
            "<": actual < expected,
            ">=": actual >= expected,
            "<=": actual <= expected,
        }[op]
    )


def run(
    schema: Schema, query: Query, render: Callable[[str, dict[str, Any]], dict[str, Any]]
) -> list[dict[str, Any]]:
    """The query's rows as Salesforce's REST answer shows them (``render`` adds attributes)."""
    if query.object not in schema.fields:
        raise SoqlError(
            "INVALID_TYPE",
            f"sObject type '{query.object}' is not supported. If you are attempting to use a "
            "custom object, be sure to append the '__c' after the entity name.",
        )
    for path in query.fields + [path for path, _desc in query.order]:
        _field_type(schema, query.object, path)
    for path, _op, value in query.where:
        _owner, kind = _field_type(schema, query.object, path)
        for item in value if isinstance(value, list) else [value]:
            _check_literal(path, kind, item)
    rows = [
        record
        for record in schema.records(query.object).values()
        if all(
            _matches(op, _resolve(schema, query.object, record, path), value)
            for path, op, value in query.where
        )
    ]
    for path, descending in reversed(query.order):

        def key(record: dict[str, Any], path: str = path) -> tuple[bool, Any]:
            value = _resolve(schema, query.object, record, path)
            return value is not None, value if value is not None else 0

        rows.sort(key=key, reverse=descending)
    if query.limit is not None:
        rows = rows[: query.limit]
    return [_row(schema, query, record, render) for record in rows]


def _row(
    schema: Schema,
    query: Query,
    record: dict[str, Any],
    render: Callable[[str, dict[str, Any]], dict[str, Any]],
) -> dict[str, Any]:
    out = render(query.object, {})
    out["attributes"]["url"] += f"/{record['Id']}"
    for path in query.fields:
        parts = path.split(".")
        if len(parts) == 1:
            name = _canonical(schema, query.object, path)
            out[name] = render(query.object, {name: record.get(name)})[name]
            continue
        ref_field = _canonical(schema, query.object, parts[0] + "Id")
        target = schema.fields[query.object][ref_field].split(":", 1)[1]
        parent = schema.records(target).get(record.get(ref_field) or "")
        if parent is None:
            out[parts[0]] = None
            continue
        nested = out.setdefault(parts[0], render(target, {}))
        nested["attributes"]["url"] = nested["attributes"]["url"].rsplit("/", 1)[0]
        nested["attributes"]["url"] += f"/{parent['Id']}"
        name = _canonical(schema, target, parts[1])
        nested[name] = render(target, {name: parent.get(name)})[name]
    for sub in query.subqueries:
        child = schema.children.get((query.object, sub.object))
        if child is None:
            raise SoqlError(
                "INVALID_TYPE",
                f"Didn't understand relationship '{sub.object}' in FROM part of query call.",
            )
        child_object, ref = child
        inner = Query(
            child_object,
            sub.fields,
            [],
            [*sub.where, (ref, "=", record["Id"])],
            sub.order,
            sub.limit,
        )
        records = run(schema, inner, render)
        out[sub.object] = (
            {"totalSize": len(records), "done": True, "records": records} if records else None
        )
    return out
