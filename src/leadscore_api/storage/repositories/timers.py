"""SQL of ``lead_timers``: the deadlines a lead has under a ruleset, and which of them are due."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, delete, select, update
from sqlalchemy.orm import Session

from leadscore_api.storage.base import Base
from leadscore_api.storage.delivery_models import LeadTimer
from leadscore_api.storage.distribution import is_distributed
from leadscore_api.storage.fast_sql import FastInsert, FastStatement

_TIMERS: Table = Base.metadata.tables[LeadTimer.__tablename__]
#: Rows per IN (...) list, far below SQLite's and PostgreSQL's parameter limits.
_CHUNK = 500

# Every statement names the lead (the key is lead id, id): on a distributed database each goes
# to the nodes of the leads of the request only.
_UPDATE_TIMERS = (
    update(_TIMERS)
    .where(_TIMERS.c.lead_id == bindparam("b_lead_id"), _TIMERS.c.id == bindparam("b_id"))
    .values(due_at=bindparam("due_at"), detail=bindparam("detail"), fired_at=None)
)
_DELETE_TIMERS = delete(_TIMERS).where(
    _TIMERS.c.lead_id.in_(bindparam("lead_ids", expanding=True)),
    _TIMERS.c.id.in_(bindparam("ids", expanding=True)),
)
_SELECT_TIMERS = select(
    _TIMERS.c.id,
    _TIMERS.c.lead_id,
    _TIMERS.c.ruleset_name,
    _TIMERS.c.kind,
    _TIMERS.c.due_at,
    _TIMERS.c.fired_at,
    _TIMERS.c.detail,
).where(_TIMERS.c.lead_id.in_(bindparam("ids", expanding=True)))


_FAST_UPDATE_TIMERS = FastStatement(_UPDATE_TIMERS)
_FAST_DELETE_TIMERS = FastStatement(_DELETE_TIMERS)
_FAST_SELECT_TIMERS = FastStatement(_SELECT_TIMERS)
_FAST_INSERT_TIMERS = FastInsert(_TIMERS)


@dataclass
class TimerPlan:
    """The timers one lead should have under one ruleset after its rescore."""

    lead_id: str
    ruleset_name: str
    wanted: dict[str, tuple[datetime, dict[str, Any]]]


def write_timers(session: Session, plans: Sequence[TimerPlan]) -> None:
    """Make the leads' timers match their plans, for all leads of a request at once.

    Planned timers are added, others of the same lead and ruleset removed, and a timer whose
    time moved later than it fired fires again; in one SELECT and at most three executemany statements for all the
    leads of a request, because this runs in the scoring transaction of every ingest.
    """
    if not plans:
        return
    latest = {(plan.lead_id, plan.ruleset_name): plan for plan in plans}
    existing: dict[
        tuple[str, str], dict[str, tuple[int, datetime, datetime | None, dict[str, Any]]]
    ] = defaultdict(dict)
    lead_ids = sorted({plan.lead_id for plan in plans})
    for chunk in (lead_ids[i : i + _CHUNK] for i in range(0, len(lead_ids), _CHUNK)):
        for (
            timer_id,
            lead_id,
            ruleset_name,
            kind,
            due_at,
            fired_at,
            detail,
        ) in _FAST_SELECT_TIMERS.execute(session, {"ids": chunk}):
            if (lead_id, ruleset_name) in latest:
                existing[(lead_id, ruleset_name)][kind] = (timer_id, due_at, fired_at, detail or {})
    stale: list[tuple[str, int]] = []
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for key, plan in latest.items():
        have = existing.get(key, {})
        stale.extend(
            (plan.lead_id, timer_id)
            for kind, (timer_id, *_) in have.items()
            if kind not in plan.wanted
        )
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
            elif _same_recurrence(found[3], detail):
                continue  # a recurring timer moves itself on; the same anchor keeps it
            elif found[1] != due and (found[2] is None or due > found[2]):
                # A timer that already fired stays fired when its deadline moves to a moment
                # it had passed anyway (an old event placed in time); a deadline moved past
                # the firing (a new hand-over) arms it again.
                updates.append(
                    {"b_lead_id": plan.lead_id, "b_id": found[0], "due_at": due, "detail": detail}
                )
    for start in range(0, len(stale), _CHUNK):
        part = stale[start : start + _CHUNK]
        _FAST_DELETE_TIMERS.execute(
            session,
            {"lead_ids": sorted({lead for lead, _ in part}), "ids": [i for _, i in part]},
        )
    _FAST_INSERT_TIMERS.executemany(session, inserts)
    _FAST_UPDATE_TIMERS.executemany(session, updates)


def _same_recurrence(stored: dict[str, Any], planned: dict[str, Any]) -> bool:
    """Whether a recurring timer is the one already stored (same start of its count)."""
    return (
        bool(planned.get("every"))
        and stored.get("anchor") == planned.get("anchor")
        and (stored.get("every") == planned.get("every"))
    )


def claim_due(session: Session, now: datetime, limit: int) -> list[LeadTimer]:
    """Unfired timers due at ``now``, oldest first; locked (skipping locked ones) on PostgreSQL.

    A distributed database locks rows of one lead per statement: the due timers are read, then
    each is claimed by its key (lead id, id) if it is still due and unfired and no other worker
    holds it.
    """
    due = (LeadTimer.fired_at.is_(None), LeadTimer.due_at <= now)
    query = select(LeadTimer).where(*due).order_by(LeadTimer.due_at).limit(limit)
    if session.get_bind().dialect.name != "postgresql":
        return list(session.scalars(query))
    if not is_distributed(session):
        return list(session.scalars(query.with_for_update(skip_locked=True)))
    keys = session.execute(
        select(LeadTimer.lead_id, LeadTimer.id).where(*due).order_by(LeadTimer.due_at).limit(limit)
    ).all()
    claimed: list[LeadTimer] = []
    for lead_id, timer_id in keys:
        claim = (
            select(LeadTimer)
            .where(LeadTimer.lead_id == lead_id, LeadTimer.id == timer_id, *due)
            .with_for_update(skip_locked=True)
        )
        claimed.extend(session.scalars(claim))
    return claimed


def delete_for_lead(session: Session, lead_id: str) -> None:
    session.execute(delete(LeadTimer).where(LeadTimer.lead_id == lead_id))
