"""The ingest hot path's statements, run on the session's own DBAPI cursor.

A profile of ``ingest_events`` spent about a third of its CPU in SQLAlchemy's per-execution
machinery (compiled-cache lookups, parameter construction, bind and result processors, result
objects) against under 2 % in the database driver. The few statements every ingest runs are
therefore compiled once per dialect from the same Core statements the rest of the code uses,
and executed with ``cursor.execute``/``executemany`` on the connection of the session's
transaction, with values converted here exactly as SQLAlchemy would store them:

* JSON columns: ``json_codec.dumps`` text on SQLite (``None`` as JSON ``null``, as SQLAlchemy
  does by default), a ``psycopg`` ``Jsonb`` wrapper on PostgreSQL (the connection's adapters,
  set up by SQLAlchemy, serialise it with ``json_codec.dumps`` and decode results with
  ``json_codec.loads``);
* ``UTCDateTime``: in UTC; on SQLite as SQLAlchemy's ``DATETIME`` text
  (``YYYY-MM-DD HH:MM:SS.ffffff``), read back time-zone aware;
* every other type through SQLAlchemy's own processor for the dialect, when it has one.

The transaction stays the unit of work's: the cursor belongs to ``session.connection()``, which
began the transaction through SQLAlchemy (so SQLite's ``BEGIN IMMEDIATE`` and writer lock in
``storage/db.py`` still apply). Driver errors are wrapped in SQLAlchemy's exception classes, so
``unit_of_work.is_retryable`` sees the same ``IntegrityError``/``OperationalError`` as before.
Dialects other than pysqlite and psycopg run the statements through SQLAlchemy unchanged.

On a distributed database (Citus, ``storage/distribution.is_distributed``) the bulk writes are
one statement per row, each naming its lead, instead of one ``unnest`` statement for all rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import JSON, Connection, Float, Table, bindparam, insert, update
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Update
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.selectable import SelectBase
from sqlalchemy.types import TypeEngine

from leadscore_api import json_codec
from leadscore_api.storage.base import UTCDateTime
from leadscore_api.storage.distribution import is_distributed

#: A parameter that has no value of its own in the statement (the caller gives it).
_NO_VALUE = object()
Converter = Callable[[Any], Any] | None
#: The drivers whose parameter and result handling this module reproduces.
_FAST_DRIVERS = frozenset({("sqlite", "pysqlite"), ("postgresql", "psycopg")})


def _sqlite_datetime_in(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is not UTC:
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; pass an aware datetime")
        value = value.astimezone(UTC)
    # SQLAlchemy's SQLite DATETIME storage format, always with microseconds: the ISO text up
    # to the offset (the year is always written with four digits).
    return value.isoformat(" ", "microseconds")[:26]


def _pg_datetime_in(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetimes are not stored; pass an aware datetime")
    return value.astimezone(UTC)


def _sqlite_datetime_out(value: str | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(value + "+00:00")


def _pg_datetime_out(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _json_out(value: str | None) -> Any:
    return None if value is None else json_codec.loads(value)


def _is_json(type_: TypeEngine[Any], dialect: Dialect) -> bool:
    return isinstance(type_.dialect_impl(dialect), JSON)


def _bind_converter(type_: TypeEngine[Any], dialect: Dialect) -> Converter:
    sqlite = dialect.name == "sqlite"
    if isinstance(type_, UTCDateTime):
        return _sqlite_datetime_in if sqlite else _pg_datetime_in
    if _is_json(type_, dialect):
        if sqlite:
            return json_codec.dumps
        from psycopg.types.json import Jsonb

        return Jsonb
    return type_.dialect_impl(dialect).bind_processor(dialect)


def _result_converter(type_: TypeEngine[Any], dialect: Dialect) -> Converter:
    sqlite = dialect.name == "sqlite"
    if isinstance(type_, UTCDateTime):
        return _sqlite_datetime_out if sqlite else _pg_datetime_out
    if _is_json(type_, dialect):
        # psycopg decodes JSONB itself, with json_codec.loads (SQLAlchemy set its adapters).
        return _json_out if sqlite else None
    return type_.dialect_impl(dialect).result_processor(dialect, None)


@dataclass
class _Compiled:
    """A statement compiled for one dialect with positional parameters."""

    compiled: SQLCompiler
    #: (parameter name, converter, the statement's own value or _NO_VALUE, expanding), in
    #: placeholder order.
    plan: list[tuple[str, Converter, Any, bool]]
    results: list[Converter]
    sql: str | None
    #: SQL per tuple of expanding-list lengths.
    expanded: dict[tuple[int, ...], str] = field(default_factory=dict)


def _positional_dialect(dialect: Dialect) -> Dialect:
    """A dialect of the same kind that renders positional placeholders (``?`` or ``%s``)."""
    if dialect.positional:
        return dialect
    # psycopg's default is ``%(name)s``; ``%s`` with a tuple is the same statement to it.
    make: Any = type(dialect)
    return cast(Dialect, make(paramstyle="format"))


class FastStatement:
    """A Core statement compiled once per dialect and run on the DBAPI cursor."""

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._by_dialect: dict[str, _Compiled] = {}

    def _compile(self, dialect: Dialect) -> _Compiled:
        found = self._by_dialect.get(dialect.name)
        if found is not None:
            return found
        compiled = self.statement.compile(dialect=_positional_dialect(dialect))
        assert isinstance(compiled, SQLCompiler)
        if compiled.insert_prefetch or compiled.update_prefetch:
            raise ValueError("statement has Python-side defaults; give every value")
        plan: list[tuple[str, Converter, Any, bool]] = []
        for name in compiled.positiontup or ():
            bind = compiled.binds[name]
            convert = _bind_converter(bind.type, dialect)
            constant: Any = _NO_VALUE
            if not bind.required and bind.callable is None:
                constant = convert(bind.value) if convert else bind.value
            plan.append((name, convert, constant, bool(bind.expanding)))
        results: list[Converter] = []
        if isinstance(self.statement, SelectBase):
            results = [_result_converter(c.type, dialect) for c in self.statement.selected_columns]
        expanding = any(item[3] for item in plan)
        found = _Compiled(compiled, plan, results, None if expanding else compiled.string)
        self._by_dialect[dialect.name] = found
        return found

    @staticmethod
    def _fast(connection: Connection) -> bool:
        dialect = connection.dialect
        return (dialect.name, dialect.driver) in _FAST_DRIVERS

    def _row(self, compiled: _Compiled, values: Mapping[str, Any]) -> list[Any]:
        row: list[Any] = []
        for name, convert, constant, expanding in compiled.plan:
            if constant is not _NO_VALUE and name not in values:
                row.append(constant)
                continue
            value = values[name]
            if expanding:
                row.extend(convert(v) for v in value) if convert else row.extend(value)
            else:
                row.append(convert(value) if convert is not None else value)
        return row

    def _sql(self, compiled: _Compiled, values: Mapping[str, Any]) -> str:
        if compiled.sql is not None:
            return compiled.sql
        lengths = tuple(len(values[name]) for name, _, _, expanding in compiled.plan if expanding)
        sql = compiled.expanded.get(lengths)
        if sql is None:
            dummy = {
                name: [None] * len(values[name])
                for name, _, _, expanding in compiled.plan
                if expanding
            }
            sql = compiled.compiled.construct_expanded_state(dummy).statement
            compiled.expanded[lengths] = sql
        return sql

    def execute(self, session: Session, values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run once; the rows (if any) as tuples with values as SQLAlchemy would return them."""
        connection = session.connection()
        if not self._fast(connection):
            result = connection.execute(cast(Executable, self.statement), dict(values))
            return [tuple(row) for row in result] if result.returns_rows else []
        dialect = connection.dialect
        compiled = self._compile(dialect)
        sql = self._sql(compiled, values)
        params = self._row(compiled, values)
        cursor = _cursor(connection)
        try:
            cursor.execute(sql, params)
            if cursor.description is None:
                return []
            rows = cursor.fetchall()
        except dialect.loaded_dbapi.Error as exc:
            raise _wrap(sql, params, exc, dialect) from exc
        finally:
            cursor.close()
        converters = compiled.results
        if not any(converters):
            return [tuple(row) for row in rows]
        return [
            tuple(
                convert(value) if convert is not None else value
                for convert, value in zip(converters, row, strict=True)
            )
            for row in rows
        ]

    def executemany(self, session: Session, rows: Sequence[Mapping[str, Any]]) -> int:
        """Run once per row in one driver call; the number of rows changed (-1 if unknown)."""
        if not rows:
            return 0
        connection = session.connection()
        if not self._fast(connection):
            return int(
                connection.execute(
                    cast(Executable, self.statement), [dict(r) for r in rows]
                ).rowcount
            )
        dialect = connection.dialect
        compiled = self._compile(dialect)
        sql = self._sql(compiled, rows[0])
        params = [self._row(compiled, row) for row in rows]
        cursor = _cursor(connection)
        try:
            if len(params) == 1:
                cursor.execute(sql, params[0])
            else:
                cursor.executemany(sql, params)
            return int(cursor.rowcount)
        except dialect.loaded_dbapi.Error as exc:
            raise _wrap(sql, params, exc, dialect) from exc
        finally:
            cursor.close()


class FastInsert:
    """``INSERT`` of whole rows into a table: every column but a database-generated key.

    A column a row leaves out gets its Python-side default, as SQLAlchemy's Core insert would.
    """

    def __init__(self, table: Table) -> None:
        self.table = table
        self._by_columns: dict[frozenset[str], tuple[FastStatement, list[tuple[str, Any]]]] = {}
        self._pg: dict[tuple[str, ...], tuple[str, list[Converter]]] = {}

    def _statement(self, keys: Iterable[str]) -> tuple[FastStatement, list[tuple[str, Any]]]:
        given = frozenset(keys)
        found = self._by_columns.get(given)
        if found is not None:
            return found
        names = [c.name for c in self.table.columns if c.name in given or c.default is not None]
        unknown = given - {c.name for c in self.table.columns}
        if unknown:
            raise ValueError(f"{self.table.name} has no columns {sorted(unknown)}")
        defaults = [
            (c.name, c.default)
            for c in self.table.columns
            if c.name not in given and c.default is not None
        ]
        statement = insert(self.table).values(
            {name: bindparam(name, type_=self.table.c[name].type) for name in names}
        )
        found = (FastStatement(statement), defaults)
        self._by_columns[given] = found
        return found

    def executemany(self, session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        statement, defaults = self._statement(rows[0].keys())
        if defaults:
            rows = [{**row, **{name: _default(d) for name, d in defaults}} for row in rows]
        connection = session.connection()
        dialect = connection.dialect
        if (
            len(rows) > 1
            and (dialect.name, dialect.driver) == ("postgresql", "psycopg")
            and not is_distributed(session)
        ):
            self._unnest(connection, dialect, rows)
        else:
            statement.executemany(session, rows)

    def _unnest(
        self, connection: Connection, dialect: Dialect, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        """One ``INSERT ... SELECT FROM unnest(...)`` of binary arrays, one per column (see
        :class:`BulkUpdate`), the rows inserted in the given order."""
        names = tuple(rows[0].keys())
        found = self._pg.get(names)
        if found is None:
            quote = dialect.identifier_preparer.quote
            columns = [self.table.c[name] for name in names]
            arrays = ", ".join(f"%b::{c.type.compile(dialect=dialect)}[]" for c in columns)
            listed = ", ".join(quote(name) for name in names)
            aliases = ", ".join(f"c{i}" for i in range(len(names)))
            sql = (
                f"INSERT INTO {quote(self.table.name)} ({listed}) SELECT {aliases} FROM"
                f" unnest({arrays}) WITH ORDINALITY AS v({aliases}, n) ORDER BY n"
            )
            found = (sql, [_array_converter(c.type, dialect) for c in columns])
            self._pg[names] = found
        sql, converters = found
        params = [
            [convert(row[name]) for row in rows] if convert else [row[name] for row in rows]
            for name, convert in zip(names, converters, strict=True)
        ]
        cursor = _cursor(connection)
        try:
            cursor.execute(sql, params)
        except dialect.loaded_dbapi.Error as exc:
            raise _wrap(sql, params, exc, dialect) from exc
        finally:
            cursor.close()


def _array_converter(type_: TypeEngine[Any], dialect: Dialect) -> Converter:
    """A value as an element of a binary array: psycopg dumps a list of one Python type only,
    so a float column's whole numbers are given as floats."""
    if isinstance(type_.dialect_impl(dialect), Float):
        return _as_float
    return _bind_converter(type_, dialect)


def _as_float(value: Any) -> float | None:
    return None if value is None else float(value)


class BulkUpdate:
    """``UPDATE`` of many rows of one table, each found by its key and guarded by its version.

    On PostgreSQL (psycopg) it is one statement for all the rows: the values go as one array
    per column and ``unnest`` turns them back into rows to join on, so the server plans and
    runs one statement and the client sends one message, whatever the number of rows (with
    ``executemany`` psycopg sends and the server runs one statement per row). The text does
    not depend on the number of rows, so psycopg prepares it once per connection. The arrays
    go in binary form (``%b``): as text, every quote of the JSON values is escaped, which cost
    more client CPU than the statements saved (measured). Elsewhere, and when two rows would
    update the same one, it is ``executemany`` of the same update.

    ``match`` pairs parameter names with the key (and version) columns they must equal;
    ``values`` pairs the columns to set with their parameter names.
    """

    def __init__(
        self, table: Table, match: Sequence[tuple[str, str]], values: Sequence[tuple[str, str]]
    ) -> None:
        self.table = table
        self.match = list(match)
        self.values = list(values)
        self.key = [name for name, column in self.match if column != "version"]
        #: The same update as a Core statement (what other dialects run, row by row).
        self.statement: Update = (
            update(table)
            .where(*(table.c[column] == bindparam(name) for name, column in self.match))
            .values({column: bindparam(name) for column, name in self.values})
        )
        self.fallback = FastStatement(self.statement)
        self._pg: tuple[str, list[tuple[str, Converter]]] | None = None

    def _postgres(self, dialect: Dialect) -> tuple[str, list[tuple[str, Converter]]]:
        if self._pg is not None:
            return self._pg
        quote = dialect.identifier_preparer.quote
        table = quote(self.table.name)
        names = [name for name, _ in self.match] + [name for _, name in self.values]
        columns = [self.table.c[c] for _, c in self.match] + [
            self.table.c[c] for c, _ in self.values
        ]
        arrays = ", ".join(f"%b::{column.type.compile(dialect=dialect)}[]" for column in columns)
        sql = (
            f"UPDATE {table} SET "
            + ", ".join(f"{quote(column)} = v.{name}" for column, name in self.values)
            + f" FROM unnest({arrays}) AS v({', '.join(names)}) WHERE "
            + " AND ".join(f"{table}.{quote(column)} = v.{name}" for name, column in self.match)
        )
        plan = [
            (name, _bind_converter(column.type, dialect))
            for name, column in zip(names, columns, strict=True)
        ]
        self._pg = (sql, plan)
        return self._pg

    def executemany(self, session: Session, rows: Sequence[Mapping[str, Any]]) -> int:
        """Update every row; the number of rows changed (-1 if the driver cannot tell)."""
        if not rows:
            return 0
        connection = session.connection()
        dialect = connection.dialect
        if (
            len(rows) == 1
            or (dialect.name, dialect.driver) != ("postgresql", "psycopg")
            or is_distributed(session)
        ):
            return self.fallback.executemany(session, rows)
        if len({tuple(row[name] for name in self.key) for row in rows}) < len(rows):
            return self.fallback.executemany(session, rows)
        sql, plan = self._postgres(dialect)
        params = [
            [convert(row[name]) for row in rows] if convert else [row[name] for row in rows]
            for name, convert in plan
        ]
        cursor = _cursor(connection)
        try:
            cursor.execute(sql, params)
            return int(cursor.rowcount)
        except dialect.loaded_dbapi.Error as exc:
            raise _wrap(sql, params, exc, dialect) from exc
        finally:
            cursor.close()


def _default(column_default: Any) -> Any:
    if column_default.is_scalar:
        return column_default.arg
    # SQLAlchemy wraps a zero-argument callable into one taking the execution context.
    return column_default.arg(None)


def _cursor(connection: Connection) -> Any:
    return connection.connection.driver_connection.cursor()  # type: ignore[union-attr]


def _wrap(sql: str, params: Any, exc: Exception, dialect: Dialect) -> DBAPIError:
    wrapped = DBAPIError.instance(
        sql,
        params,
        exc,
        dialect.loaded_dbapi.Error,
        dialect=dialect,
        hide_parameters=True,
        ismulti=isinstance(params, list) and bool(params) and isinstance(params[0], list),
    )
    assert isinstance(wrapped, DBAPIError)
    return wrapped
