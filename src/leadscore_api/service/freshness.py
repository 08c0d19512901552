"""Fresh scores: leads whose summary time alone has changed are re-scored as of now.

Decay, expiring points and counting windows change a lead between its events. Each scoring
stores when that may next happen (``leads.next_change_at``, from the core's
``Scorer.next_change``); the sweep, run by the worker every
``LEADSCORE_TIMER_INTERVAL_SECONDS``, takes the leads that are due through that column's index
(never a scan of all leads) and scores them with no new event. A visible change gets a history
row with cause ``time`` and its transitions go out like any other (``lead.tier_changed`` when a
lead cools down). On PostgreSQL the due rows are claimed with ``FOR UPDATE SKIP LOCKED``, so
several workers and replicas share them and each due lead is handled once.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.service.rulesets import RulesetRegistry
from leadscore_api.service.scoring import PendingWrites, score_lead
from leadscore_api.service.timers import tick as fire_timers
from leadscore_api.storage.repositories import leads as leads_repo
from leadscore_api.storage.unit_of_work import in_transaction

#: Leads re-scored per transaction; the sweep comes back for the rest at once.
SWEEP_BATCH = 200


def refresh_due(
    session_factory: sessionmaker[Session], registry: RulesetRegistry, now: datetime
) -> int:
    """Re-score every lead due at ``now``; return how many were looked at."""
    refreshed = 0
    while True:
        count = in_transaction(session_factory, lambda s: _refresh_batch(s, registry, now))
        refreshed += count
        if count < SWEEP_BATCH:
            return refreshed


def _refresh_batch(session: Session, registry: RulesetRegistry, now: datetime) -> int:
    ids = leads_repo.due_for_refresh(session, now, SWEEP_BATCH)
    if not ids:
        return 0
    leads = leads_repo.lock_leads(session, ids)
    scores = leads_repo.load_scores(session, leads)
    pending = PendingWrites()
    for lead_id, lead in leads.items():
        score_lead(session, registry, lead, scores[lead_id], [], now, pending, cause="time")
    pending.write(session)
    return len(ids)


def time_tick(
    registry: RulesetRegistry,
) -> Callable[[sessionmaker[Session], datetime], int]:
    """What the worker runs on each timer round: fresh scores first, then due timers.

    Scores first, because a lead that cooled down rewrites its timers in the same step.
    """

    def tick(session_factory: sessionmaker[Session], now: datetime) -> int:
        refresh_due(session_factory, registry.current(), now)
        return fire_timers(session_factory, now)

    return tick
