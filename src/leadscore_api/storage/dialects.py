"""Where the schema differs between PostgreSQL and SQLite, declared once on the tables.

The metadata describes the PostgreSQL schema, the one a distributed PostgreSQL (Citus) needs:
the key of every per-lead table includes the lead id (``storage/distribution.py``). SQLite
cannot follow it for the tables whose key is a generated number: SQLite generates a key only
for a column that is the whole primary key (``INTEGER PRIMARY KEY``, the rowid), never for one
column of a composite key. So those tables keep ``PRIMARY KEY (id)`` on SQLite, where nothing
is distributed and the id is unique anyway, and say so with :func:`sqlite_key`:

* the migrations create exactly that on each database (``0014_citus_ready`` changes the keys
  on PostgreSQL only);
* ``CREATE TABLE`` compiled for SQLite from the metadata renders the SQLite key (the two
  compiler hooks at the end of this module), so the metadata alone builds the same working
  tables;
* Alembic's comparison of the models with a database ignores primary keys, and skips what
  :func:`only_on` declares for another database (:func:`exists_on`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Index, PrimaryKeyConstraint, Table
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import CreateColumn, SchemaItem

#: ``PrimaryKeyConstraint.info`` key: the columns of the primary key on SQLite.
SQLITE_KEY = "leadscore_sqlite_key"
#: ``info`` key of an index or constraint that exists on one database only.
ONLY_ON = "leadscore_only_on"

ItemT = TypeVar("ItemT", bound=Index)


def sqlite_key(*columns: str, sqlite: tuple[str, ...], name: str) -> PrimaryKeyConstraint:
    """A primary key of ``columns`` that is ``sqlite`` on SQLite (a generated rowid key)."""
    return PrimaryKeyConstraint(*columns, name=name, info={SQLITE_KEY: sqlite})


def only_on(dialect: str, item: ItemT) -> ItemT:
    """``item`` exists on ``dialect`` only: created there alone, compared there alone."""
    item.info[ONLY_ON] = dialect
    item.ddl_if(dialect=dialect)
    return item


def exists_on(item: Any, dialect: str) -> bool:
    """Whether a schema item of the metadata belongs on a database of ``dialect``.

    Used as (part of) Alembic's ``include_object`` when it compares the models with a database.
    """
    info = item.info if isinstance(item, SchemaItem) else {}
    wanted = info.get(ONLY_ON)
    return wanted is None or wanted == dialect


def include_object_for(dialect: str) -> Callable[[Any, str | None, str, bool, Any], bool]:
    """Alembic's ``include_object`` for comparing the models with a database of ``dialect``."""

    def include(item: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        return reflected or exists_on(item, dialect)

    return include


def sqlite_primary_key(table: Table) -> tuple[str, ...]:
    """The columns of ``table``'s primary key as SQLite has it."""
    declared = table.primary_key.info.get(SQLITE_KEY)
    if declared is not None:
        return tuple(declared)
    return tuple(column.name for column in table.primary_key.columns)


@compiles(PrimaryKeyConstraint, "sqlite")
def _primary_key_on_sqlite(constraint: PrimaryKeyConstraint, compiler: Any, **kw: Any) -> str:
    declared = constraint.info.get(SQLITE_KEY)
    if declared is None:
        return str(compiler.visit_primary_key_constraint(constraint, **kw))
    name = compiler.preparer.format_constraint(constraint)
    columns = ", ".join(compiler.preparer.quote(column) for column in declared)
    return f"CONSTRAINT {name} PRIMARY KEY ({columns})"


@compiles(CreateColumn, "sqlite")
def _column_on_sqlite(create: CreateColumn, compiler: Any, **kw: Any) -> str:
    # SQLAlchemy refuses a generated column in a composite key on SQLite; with the SQLite key
    # above, the column is the whole key there (``INTEGER`` and the key: the rowid).
    column = create.element
    table = column.table
    if column.autoincrement is not True or SQLITE_KEY not in table.primary_key.info:
        return str(compiler.visit_create_column(create, **kw))
    type_ = compiler.dialect.type_compiler_instance.process(column.type, type_expression=column)
    return f"{compiler.preparer.format_column(column)} {type_} NOT NULL"
