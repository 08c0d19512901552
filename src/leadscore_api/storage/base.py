"""Declarative base and column types shared by every table.

Times are stored in UTC and always come back time-zone aware, on SQLite as on PostgreSQL, so
that code comparing them never mixes naive and aware datetimes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, MetaData
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and read back aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; pass an aware datetime")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


#: JSON everywhere, JSONB on PostgreSQL.
JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: dict[Any, Any] = {datetime: UTCDateTime}


def as_read_back(value: Any, dialect_name: str) -> Any:
    """``value`` as a ``JSONType`` column of this dialect gives it back after storing it.

    SQLite keeps the JSON text as written. PostgreSQL's ``jsonb`` keeps a parsed form: an
    object's keys come back ordered by their length in bytes, then bytewise, and numbers are
    decimals, so ``-0.0`` comes back as ``0.0`` and a float written with an exponent of 16 or
    more (orjson writes ``1e16``) as an integer. A value built when read (an explanation
    rendered from stored inputs) goes through this to answer exactly as a stored one would.
    """
    if dialect_name != "postgresql":
        return value
    return _as_jsonb(value)


def _as_jsonb(value: Any) -> Any:
    kind = type(value)
    if kind is dict:
        items = [(key.encode(), key, _as_jsonb(item)) for key, item in value.items()]
        items.sort(key=lambda entry: (len(entry[0]), entry[0]))
        return {key: item for _, key, item in items}
    if kind is list or kind is tuple:
        return [_as_jsonb(item) for item in value]
    if kind is float:
        if value == 0.0:
            return 0.0
        if abs(value) >= 1e16 and value == value and abs(value) != float("inf"):
            return int(value)
    return value
