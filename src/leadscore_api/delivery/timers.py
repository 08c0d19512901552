"""Time-driven transitions: ``lead.sla_breached`` and ``lead.requalify_due``.

Nothing happens to a lead when its SLA deadline passes, so no event can publish the breach.
Instead the scoring path records the lead's upcoming deadlines in ``lead_timers`` in the same
transaction that rescored it (:func:`schedule_timers`), and the timer loop
(:func:`tick`, every ``LEADSCORE_TIMER_INTERVAL_SECONDS``) turns the due ones into outbox
messages, once. A later rescore that meets the SLA or changes the tier rewrites the timers, so
a stale deadline never fires. Several workers may tick at once: on PostgreSQL due timers are
claimed with ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, delete, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.delivery.models import LeadTimer
from leadscore_api.delivery.outbox import LEAD_FIELDS, enqueue_transitions
from leadscore_api.scoring import Transition
from leadscore_api.storage.base import Base
from leadscore_api.storage.models import Lead

_TIMERS: Table = Base.metadata.tables[LeadTimer.__tablename__]
#: Rows per IN (...) list, far below SQLite's and PostgreSQL's parameter limits.
_CHUNK = 500
REQUALIFY = "requalify"
SLA_PREFIX = "sla:"
#: Timers fired per transaction; the loop comes back for the rest at once.
TICK_BATCH = 500


def _parse_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


_UPDATE_TIMERS = (
    update(_TIMERS)
    .where(_TIMERS.c.id == bindparam("b_id"))
    .values(due_at=bindparam("due_at"), detail=bindparam("detail"), fired_at=None)
)
_DELETE_TIMERS = delete(_TIMERS).where(_TIMERS.c.id.in_(bindparam("ids", expanding=True)))
_SELECT_TIMERS = select(
    _TIMERS.c.id,
    _TIMERS.c.lead_id,
    _TIMERS.c.ruleset_name,
    _TIMERS.c.kind,
    _TIMERS.c.due_at,
).where(_TIMERS.c.lead_id.in_(bindparam("ids", expanding=True)))


@dataclass
class TimerPlan:
    """The timers one lead should have under one ruleset after its rescore."""

    lead_id: str
    ruleset_name: str
    wanted: dict[str, tuple[datetime, dict[str, Any]]]


def plan_timers(
    lead_id: str,
    ruleset_name: str,
    sla: Sequence[dict[str, Any]],
    requalify_due: datetime | None,
    tier: str | None,
) -> TimerPlan:
    """The timers the lead should have: unmet SLAs at their deadline, and re-qualification."""
    wanted: dict[str, tuple[datetime, dict[str, Any]]] = {}
    for item in sla:
        due = _parse_time(item.get("due"))
        if due is None or item.get("met_at") is not None:
            continue
        detail = {"sla_id": item.get("id"), "stage": item.get("stage"), "due": item.get("due")}
        wanted[f"{SLA_PREFIX}{item.get('id')}"] = (due, detail)
    if requalify_due is not None:
        wanted[REQUALIFY] = (requalify_due, {"tier": tier})
    return TimerPlan(lead_id, ruleset_name, wanted)


def write_timers(session: Session, plans: Sequence[TimerPlan]) -> None:
    """Make the leads' timers match their plans, for all leads of a request at once.

    Planned timers are added, others of the same lead and ruleset removed, and a timer whose
    time moved fires again; in one SELECT and at most three executemany statements for all the
    leads of a request, because this runs in the scoring transaction of every ingest.
    """
    if not plans:
        return
    connection = session.connection()
    latest = {(plan.lead_id, plan.ruleset_name): plan for plan in plans}
    existing: dict[tuple[str, str], dict[str, tuple[int, datetime]]] = defaultdict(dict)
    lead_ids = sorted({plan.lead_id for plan in plans})
    for chunk in (lead_ids[i : i + _CHUNK] for i in range(0, len(lead_ids), _CHUNK)):
        for row in connection.execute(_SELECT_TIMERS, {"ids": chunk}):
            if (row.lead_id, row.ruleset_name) in latest:
                existing[(row.lead_id, row.ruleset_name)][row.kind] = (row.id, row.due_at)
    stale: list[int] = []
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for key, plan in latest.items():
        have = existing.get(key, {})
        stale.extend(timer_id for kind, (timer_id, _due) in have.items() if kind not in plan.wanted)
        for kind, (due, detail) in plan.wanted.items():
            found = have.get(kind)
            if found is None:
                inserts.append(
                    {
                        "lead_id": plan.lead_id,
                        "ruleset_name": plan.ruleset_name,
                        "kind": kind,
                        "due_at": due,
                        "detail": detail,
                        "fired_at": None,
                    }
                )
            elif found[1] != due:
                updates.append({"b_id": found[0], "due_at": due, "detail": detail})
    for start in range(0, len(stale), _CHUNK):
        connection.execute(_DELETE_TIMERS, {"ids": stale[start : start + _CHUNK]})
    if inserts:
        connection.execute(insert(_TIMERS), inserts)
    if updates:
        connection.execute(_UPDATE_TIMERS, updates)


def schedule_timers(
    session: Session,
    *,
    lead_id: str,
    ruleset_name: str,
    sla: Sequence[dict[str, Any]],
    requalify_due: datetime | None,
    tier: str | None = None,
) -> None:
    """Make one lead's timers match its latest scoring (``result.sla``, ``result.requalify_due``)."""
    write_timers(session, [plan_timers(lead_id, ruleset_name, sla, requalify_due, tier)])


def lead_view(lead: Lead) -> dict[str, Any]:
    """The lead as :func:`enqueue_transitions` wants it."""
    return {name: getattr(lead, name) for name in LEAD_FIELDS}


def _transition(timer: LeadTimer, lead: Lead) -> Transition:
    if timer.kind == REQUALIFY:
        return Transition(
            type="lead.requalify_due",
            from_value=None,
            to_value=lead.tier,
            at=timer.due_at,
            event_id=None,
        )
    return Transition(
        type="lead.sla_breached",
        from_value=lead.stage,
        to_value=str(timer.detail.get("sla_id") or timer.kind[len(SLA_PREFIX) :]),
        at=timer.due_at,
        event_id=None,
    )


def tick(session_factory: sessionmaker[Session], now: datetime) -> int:
    """Fire every timer due at ``now``; return how many outbox messages that queued."""
    queued = 0
    while True:
        with session_factory() as session, session.begin():
            query = (
                select(LeadTimer)
                .where(LeadTimer.fired_at.is_(None), LeadTimer.due_at <= now)
                .order_by(LeadTimer.due_at)
                .limit(TICK_BATCH)
            )
            if session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            timers = list(session.scalars(query))
            if not timers:
                return queued
            leads = {
                lead.id: lead
                for lead in session.scalars(
                    select(Lead).where(Lead.id.in_({t.lead_id for t in timers}))
                )
            }
            for timer in timers:
                timer.fired_at = now
                lead = leads.get(timer.lead_id)
                if lead is None:
                    continue
                queued += enqueue_transitions(
                    session,
                    lead=lead_view(lead),
                    transitions=[_transition(timer, lead)],
                    event_id=None,
                    ruleset_name=timer.ruleset_name,
                    ruleset_version=lead.ruleset_version or 0,
                    explanation={"timer": timer.kind, **timer.detail},
                )
        if len(timers) < TICK_BATCH:
            return queued
