"""Time-driven transitions: ``lead.sla_breached`` and ``lead.requalify_due``.

Nothing happens to a lead when its SLA deadline passes, so no event can publish the breach.
Instead the scoring path plans the lead's upcoming deadlines (:func:`plan_timers`) and writes
them in the transaction that rescored it, and the timer loop (:func:`tick`, every
``LEADSCORE_TIMER_INTERVAL_SECONDS``) turns the due ones into outbox messages, once. A later
rescore that meets the SLA or changes the tier rewrites the timers, so a stale deadline never
fires. Several workers may tick at once: on PostgreSQL due timers are claimed with ``FOR
UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.scoring import Transition
from leadscore_api.scoring.durations import parse_duration
from leadscore_api.service.delivery import enqueue_transitions, lead_view
from leadscore_api.storage.delivery_models import LeadTimer
from leadscore_api.storage.models import Lead
from leadscore_api.storage.repositories import leads as leads_repo
from leadscore_api.storage.repositories import timers as timers_repo
from leadscore_api.storage.repositories.timers import TimerPlan
from leadscore_api.storage.unit_of_work import in_transaction

REQUALIFY = "requalify"
FOLLOW_UP = "followup"
SLA_PREFIX = "sla:"
#: Timers fired per transaction; the loop comes back for the rest at once.
TICK_BATCH = 500


def _parse_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def plan_timers(
    lead_id: str,
    ruleset_name: str,
    sla: Sequence[dict[str, Any]],
    requalify_due: datetime | None,
    tier: str | None,
    follow_up: dict[str, Any] | None = None,
) -> TimerPlan:
    """The timers the lead should have: unmet SLAs at their deadline, re-qualification, and the
    tier workflow's next follow-up."""
    wanted: dict[str, tuple[datetime, dict[str, Any]]] = {}
    for item in sla:
        due = _parse_time(item.get("due"))
        if due is None or item.get("met_at") is not None:
            continue
        detail = {"sla_id": item.get("id"), "stage": item.get("stage"), "due": item.get("due")}
        wanted[f"{SLA_PREFIX}{item.get('id')}"] = (due, detail)
    if requalify_due is not None:
        wanted[REQUALIFY] = (requalify_due, {"tier": tier})
    if follow_up is not None:
        due = _parse_time(follow_up.get("due"))
        if due is not None:
            wanted[FOLLOW_UP] = (due, dict(follow_up))
    return TimerPlan(lead_id, ruleset_name, wanted)


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
    timers_repo.write_timers(
        session, [plan_timers(lead_id, ruleset_name, sla, requalify_due, tier)]
    )


def _transition(timer: LeadTimer, lead: Lead) -> Transition:
    if timer.kind == FOLLOW_UP:
        return Transition(
            type="lead.followup_due",
            from_value=lead.tier,
            to_value=str(timer.detail.get("action") or "follow_up"),
            at=timer.due_at,
            event_id=None,
        )
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
        fired, count = in_transaction(session_factory, lambda session: _fire_due(session, now))
        queued += count
        if fired < TICK_BATCH:
            return queued


def _fire_due(session: Session, now: datetime) -> tuple[int, int]:
    """Fire one batch of due timers: (timers fired, messages queued)."""
    timers = timers_repo.claim_due(session, now, TICK_BATCH)
    leads = leads_repo.leads_by_ids(session, {t.lead_id for t in timers})
    queued = 0
    for timer in timers:
        due = timer.due_at
        timer.fired_at = now
        lead = leads.get(timer.lead_id)
        if lead is None:
            continue
        late = max(0, round((now - due).total_seconds()))
        queued += enqueue_transitions(
            session,
            lead=lead_view(lead),
            transitions=[_transition(timer, lead)],
            event_id=None,
            ruleset_name=timer.ruleset_name,
            ruleset_version=lead.ruleset_version or 0,
            explanation={
                "timer": timer.kind,
                **timer.detail,
                "due": due.isoformat().replace("+00:00", "Z"),
                # For an SLA: how far past its deadline the promise was when the alarm went.
                "overdue_seconds": late,
            },
        )
        _rearm_recurring(timer, now)
    return len(timers), queued


def _rearm_recurring(timer: LeadTimer, now: datetime) -> None:
    """A recurring follow-up moves on to its next occurrence after ``now`` (it keeps its
    anchor, so the next rescore of the lead leaves it where it is)."""
    every_text = timer.detail.get("every") if timer.kind == FOLLOW_UP else None
    if not every_text:
        return
    # Rule files keep recurring follow-ups in calendar time, so the step is fixed.
    step = timedelta(seconds=parse_duration(str(every_text)).seconds)
    due = timer.due_at
    while due <= now:
        due += step
    timer.due_at = due
    timer.fired_at = None
