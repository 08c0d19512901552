"""SQL of a backtest: the stored events of a period, streamed lead by lead, and stored rulesets.

The events come ordered by (lead_id, occurred_at, id), which the index
``ix_events_lead_id_occurred_at_id`` serves, and are fetched ``yield_per`` rows at a time, so a
backtest over millions of events holds one lead's history and one fetch buffer in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, Text, func, select, type_coerce
from sqlalchemy.orm import Session

from leadscore_api import json_codec
from leadscore_api.scoring import ScoringEvent
from leadscore_api.storage.models import Event, RulesetRecord

#: Rows fetched per round trip while streaming events.
FETCH_ROWS = 5000


def _period_leads(start: datetime | None, end: datetime) -> Select[Any]:
    query = select(Event.lead_id).where(Event.occurred_at <= end)
    if start is not None:
        query = query.where(Event.occurred_at >= start)
    return query.distinct()


def lead_bounds(session: Session, end: datetime, parts: int) -> list[str | None]:
    """Lead ids that cut the stored events into ``parts`` slices of about as many events.

    Returns ``parts + 1`` bounds (``None`` at both ends): slice i holds the leads with
    ``bounds[i] <= lead_id < bounds[i+1]``, each lead whole. Events, not leads, are what a
    replay costs, and the (lead_id, occurred_at, id) index serves these offsets.
    """
    if parts <= 1:
        return [None, None]
    total = session.scalar(select(func.count()).where(Event.occurred_at <= end)) or 0
    bounds: list[str | None] = [None]
    for i in range(1, parts):
        cut = session.scalar(
            select(Event.lead_id).order_by(Event.lead_id).offset(total * i // parts).limit(1)
        )
        if cut is not None and (bounds[-1] is None or cut > bounds[-1]):
            bounds.append(cut)
    bounds.append(None)
    return bounds


def stream_lead_events(
    session: Session,
    start: datetime | None,
    end: datetime,
    *,
    low: str | None = None,
    high: str | None = None,
) -> Iterator[tuple[str, list[ScoringEvent]]]:
    """``(lead_id, events)`` for each lead with an event in [start, end], every event ≤ end.

    Events before ``start`` are included: a lead's state at the end of the period depends on
    its whole history. ``low``/``high`` restrict to a slice of lead ids (see :func:`lead_bounds`).
    """
    # The time and JSON columns are read without SQLAlchemy's result processors and decoded
    # below: on a million rows the processors cost more than the rest of the read.
    query = select(
        Event.lead_id,
        Event.id,
        Event.type,
        type_coerce(Event.occurred_at, Text),
        type_coerce(Event.properties, Text),
        type_coerce(Event.attributes, Text),
    ).where(Event.occurred_at <= end)
    if start is not None:
        query = query.where(Event.lead_id.in_(_period_leads(start, end)))
    if low is not None:
        query = query.where(Event.lead_id >= low)
    if high is not None:
        query = query.where(Event.lead_id < high)
    query = query.order_by(Event.lead_id, Event.occurred_at, Event.id)
    current: str | None = None
    events: list[ScoringEvent] = []
    rows = session.connection().execute(query.execution_options(yield_per=FETCH_ROWS))
    for lead_id, event_id, kind, occurred_at, properties, attributes in rows:
        if lead_id != current:
            if current is not None:
                yield current, events
            current = lead_id
            events = []
        events.append(
            ScoringEvent(event_id, kind, _aware(occurred_at), _json(properties), _json(attributes))
        )
    if current is not None:
        yield current, events


def _aware(value: datetime | str) -> datetime:
    """A stored time, UTC-aware (SQLite gives the text it stores, PostgreSQL a datetime)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _json(value: Any) -> dict[str, Any]:
    """A stored JSON object (text on SQLite, already decoded by the PostgreSQL driver)."""
    if isinstance(value, str | bytes):
        if value in ("{}", b"{}", "null", b"null"):
            return {}
        value = json_codec.loads(value)
    return value if isinstance(value, dict) else {}


def stored_ruleset(session: Session, name: str, version: int) -> RulesetRecord | None:
    """The stored text of ``name`` at ``version`` (the latest stored, should there be several)."""
    return session.scalar(
        select(RulesetRecord)
        .where(RulesetRecord.name == name, RulesetRecord.version == version)
        .order_by(RulesetRecord.activated_at.desc(), RulesetRecord.id.desc())
        .limit(1)
    )
