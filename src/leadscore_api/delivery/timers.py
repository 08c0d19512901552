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

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.delivery.models import LeadTimer
from leadscore_api.delivery.outbox import LEAD_FIELDS, enqueue_transitions
from leadscore_api.scoring import Transition
from leadscore_api.storage.models import Lead

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


def schedule_timers(
    session: Session,
    *,
    lead_id: str,
    ruleset_name: str,
    sla: Sequence[dict[str, Any]],
    requalify_due: datetime | None,
    tier: str | None = None,
) -> None:
    """Make the lead's timers match its latest scoring (``result.sla``, ``result.requalify_due``).

    Call it in the scoring transaction, for the primary ruleset, after each rescore. Unmet SLAs
    get a timer at their deadline; met ones lose theirs. A timer whose time moved fires again.
    """
    wanted: dict[str, tuple[datetime, dict[str, Any]]] = {}
    for item in sla:
        due = _parse_time(item.get("due"))
        if due is None or item.get("met_at") is not None:
            continue
        detail = {"sla_id": item.get("id"), "stage": item.get("stage"), "due": item.get("due")}
        wanted[f"{SLA_PREFIX}{item.get('id')}"] = (due, detail)
    if requalify_due is not None:
        wanted[REQUALIFY] = (requalify_due, {"tier": tier})
    existing = {
        timer.kind: timer
        for timer in session.scalars(
            select(LeadTimer).where(
                LeadTimer.lead_id == lead_id, LeadTimer.ruleset_name == ruleset_name
            )
        )
    }
    for kind, stale in existing.items():
        if kind not in wanted:
            session.delete(stale)
    for kind, (due, detail) in wanted.items():
        timer = existing.get(kind)
        if timer is None:
            session.add(
                LeadTimer(
                    lead_id=lead_id,
                    ruleset_name=ruleset_name,
                    kind=kind,
                    due_at=due,
                    detail=detail,
                )
            )
        elif timer.due_at != due:
            timer.due_at = due
            timer.detail = detail
            timer.fired_at = None


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
