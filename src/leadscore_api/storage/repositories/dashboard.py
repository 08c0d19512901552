"""The dashboard's own reads: the queue of hot leads, and a lead's changes in event time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from leadscore_api.storage.models import Event, Lead, ScoreChange


def hot_leads(
    session: Session,
    *,
    tier: str,
    stage: str,
    owner: str | None = None,
    limit: int = 50,
) -> list[Lead]:
    """Leads in the hot tier or the SQL stage, the most pressing due time first (none last).

    Among leads due at the same time (or with no due time), the highest score comes first.
    """
    statement = select(Lead).where(or_(Lead.tier == tier, Lead.stage == stage))
    if owner is not None:
        statement = statement.where(Lead.owner == owner)
    statement = statement.order_by(
        Lead.next_action_due.asc().nulls_last(), Lead.score.desc(), Lead.id
    ).limit(limit)
    return list(session.scalars(statement))


@dataclass(frozen=True)
class TimelineRow:
    change_id: int
    #: When the event behind the change happened (the change's own time without an event).
    at: datetime
    cause: str
    event_type: str | None
    ruleset_name: str
    ruleset_version: int
    previous: dict[str, Any] | None
    current: dict[str, Any]
    explanation: dict[str, Any]


def timeline(session: Session, lead_id: str, ruleset_name: str, limit: int) -> list[TimelineRow]:
    """The lead's last ``limit`` changes under one ruleset, with their events' times, oldest first."""
    statement = (
        select(ScoreChange, Event.type, Event.occurred_at)
        .outerjoin(Event, Event.id == ScoreChange.event_id)
        .where(ScoreChange.lead_id == lead_id, ScoreChange.ruleset_name == ruleset_name)
        .order_by(ScoreChange.id.desc())
        .limit(limit)
    )
    rows = [
        TimelineRow(
            change_id=change.id,
            at=occurred_at or change.changed_at,
            cause=change.cause,
            event_type=event_type,
            ruleset_name=change.ruleset_name,
            ruleset_version=change.ruleset_version,
            previous=change.previous,
            current=change.current,
            explanation=change.explanation,
        )
        for change, event_type, occurred_at in session.execute(statement)
    ]
    rows.reverse()
    return rows
