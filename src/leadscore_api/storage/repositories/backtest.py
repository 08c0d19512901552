"""SQL of a backtest: the stored events of a period, streamed lead by lead, and stored rulesets.

The events come ordered by (lead_id, occurred_at, id), which the index
``ix_events_lead_id_occurred_at_id`` serves, and are fetched ``yield_per`` rows at a time, so a
backtest over millions of events holds one lead's history and one fetch buffer in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from leadscore_api.scoring import ScoringEvent
from leadscore_api.storage.models import Event, RulesetRecord

#: Rows fetched per round trip while streaming events.
FETCH_ROWS = 5000


def _period_leads(start: datetime | None, end: datetime) -> Select[Any]:
    query = select(Event.lead_id).where(Event.occurred_at <= end)
    if start is not None:
        query = query.where(Event.occurred_at >= start)
    return query.distinct()


def lead_bounds(
    session: Session, start: datetime | None, end: datetime, parts: int
) -> list[str | None]:
    """Lead ids that cut the period's leads into ``parts`` slices of about equal size.

    Returns ``parts + 1`` bounds (``None`` at both ends): slice i holds the leads with
    ``bounds[i] <= lead_id < bounds[i+1]``. Each worker of a parallel backtest reads its slice.
    """
    if parts <= 1:
        return [None, None]
    leads = _period_leads(start, end).subquery()
    total = session.scalar(select(func.count()).select_from(leads)) or 0
    bounds: list[str | None] = [None]
    for i in range(1, parts):
        offset = total * i // parts
        cut = session.scalar(
            select(leads.c.lead_id).order_by(leads.c.lead_id).offset(offset).limit(1)
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
    query = select(
        Event.lead_id,
        Event.id,
        Event.type,
        Event.occurred_at,
        Event.properties,
        Event.attributes,
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
    rows = session.execute(query.execution_options(yield_per=FETCH_ROWS))
    for lead_id, event_id, kind, occurred_at, properties, attributes in rows:
        if lead_id != current:
            if current is not None:
                yield current, events
            current = lead_id
            events = []
        events.append(ScoringEvent(event_id, kind, occurred_at, properties or {}, attributes or {}))
    if current is not None:
        yield current, events


def stored_ruleset(session: Session, name: str, version: int) -> RulesetRecord | None:
    """The stored text of ``name`` at ``version`` (the latest stored, should there be several)."""
    return session.scalar(
        select(RulesetRecord)
        .where(RulesetRecord.name == name, RulesetRecord.version == version)
        .order_by(RulesetRecord.activated_at.desc(), RulesetRecord.id.desc())
        .limit(1)
    )
