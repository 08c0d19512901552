"""The dashboard's own reads: the queue of hot leads, and a lead's changes in event time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from leadscore_api.storage.delivery_models import LeadTimer
from leadscore_api.storage.models import Event, Lead, ScoreChange


def hot_leads(
    session: Session,
    *,
    tier: str,
    stage: str,
    owner: str | None = None,
    limit: int = 50,
) -> list[tuple[Lead, datetime | None]]:
    """Leads in the hot tier or the SQL stage with their due time, the most pressing first.

    The due time is the next action's own (``next_action_due``) when the rules give one, else
    the lead's next open deadline of the procedure: the earliest unfired timer (a follow-up, an
    SLA) — with the matrix choosing the action, that is when someone must call. Leads with no
    due time come last; among equal ones the highest score comes first.
    """
    deadlines = (
        select(LeadTimer.lead_id, func.min(LeadTimer.due_at).label("due_at"))
        .where(LeadTimer.fired_at.is_(None))
        .group_by(LeadTimer.lead_id)
        .subquery()
    )
    due = func.coalesce(Lead.next_action_due, deadlines.c.due_at)
    statement = (
        select(Lead, due.label("due"))
        .outerjoin(deadlines, deadlines.c.lead_id == Lead.id)
        .where(or_(Lead.tier == tier, Lead.stage == stage))
    )
    if owner is not None:
        statement = statement.where(Lead.owner == owner)
    statement = statement.order_by(due.asc().nulls_last(), Lead.score.desc(), Lead.id).limit(limit)
    return [(lead, _aware(when)) for lead, when in session.execute(statement)]


def _aware(value: datetime | str | None) -> datetime | None:
    """A due time as an aware UTC datetime (COALESCE hides the column type from SQLite)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class TimelineRow:
    change_id: int
    #: When the event behind the change happened (the change's own time without an event).
    at: datetime
    cause: str
    event_type: str | None
    ruleset_name: str
    ruleset_version: int
    ruleset_sha256: str
    previous: dict[str, Any] | None
    current: dict[str, Any]
    explanation: dict[str, Any]


def timeline(session: Session, lead_id: str, ruleset_name: str, limit: int) -> list[TimelineRow]:
    """The lead's last ``limit`` changes under one ruleset, with their events' times, oldest first."""
    statement = (
        select(ScoreChange, Event.type, Event.occurred_at)
        .outerjoin(
            Event, and_(Event.lead_id == ScoreChange.lead_id, Event.id == ScoreChange.event_id)
        )
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
            ruleset_sha256=change.ruleset_sha256,
            previous=change.previous,
            current=change.current,
            explanation=change.explanation,
        )
        for change, event_type, occurred_at in session.execute(statement)
    ]
    rows.reverse()
    return rows
