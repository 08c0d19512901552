"""enqueue_transitions matching and the timer loop's time-driven transitions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.scoring import Transition
from leadscore_api.service.delivery import enqueue_transitions
from leadscore_api.service.timers import schedule_timers, tick
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.delivery_models import LeadTimer, OutboxMessage
from leadscore_api.storage.models import Lead

from .conftest import add_subscription

LEAD: dict[str, Any] = {
    "id": "lead_1",
    "email": "a@x.it",
    "external_id": None,
    "letter": "B",
    "score": 60,
    "tier": "warm",
    "stage": "mql",
    "owner": None,
    "next_action": "mql",
    "next_action_due": datetime(2026, 11, 21, tzinfo=UTC),
}


def _enqueue(factory: sessionmaker[Session], *types: str, ruleset: str = "pmi") -> int:
    at = datetime.now(UTC)
    with factory() as session, session.begin():
        return enqueue_transitions(
            session,
            lead=LEAD,
            transitions=[Transition(t, "lead", "mql", at, None) for t in types],
            event_id="evt-1",
            ruleset_name=ruleset,
            ruleset_version=3,
            explanation={"big": "x" * 20_000} if ruleset == "huge" else {"why": "rules"},
        )


def test_matching_by_type_and_filters(db: sessionmaker[Session]) -> None:
    assert _enqueue(db, "lead.mql") == 0  # no subscription: nothing, cheaply
    add_subscription(db, "http://127.0.0.1:9/all", event_types=["*"])
    add_subscription(db, "http://127.0.0.1:9/mql", event_types=["lead.mql"])
    add_subscription(db, "http://127.0.0.1:9/a", event_types=["*"], filters={"letter": ["A"]})
    add_subscription(db, "http://127.0.0.1:9/b", event_types=["*"], filters={"letter": ["B"]})
    add_subscription(db, "http://127.0.0.1:9/hot", event_types=["*"], filters={"tier": ["hot"]})
    add_subscription(db, "http://127.0.0.1:9/rs", event_types=["*"], filters={"ruleset": "bant"})
    assert _enqueue(db, "lead.mql") == 3  # all, mql, letter B
    assert _enqueue(db, "lead.tier_changed", "lead.stage_changed") == 4
    assert _enqueue(db, "lead.sql", ruleset="bant") == 3  # all, letter B, ruleset bant
    with db() as session:
        message = session.scalars(
            select(OutboxMessage).where(OutboxMessage.event_type == "lead.mql")
        ).first()
        assert message is not None
        data = message.payload["data"]
        assert data["lead"]["next_action_due"] == "2026-11-21T00:00:00Z"
        assert data["change"] == {"from": "lead", "to": "mql"}
        assert data["ruleset"] == {"name": "pmi", "version": 3}
        assert data["event_id"] == "evt-1" and data["explanation"] == {"why": "rules"}


def test_oversized_explanation_is_left_out(db: sessionmaker[Session]) -> None:
    add_subscription(db, "http://127.0.0.1:9/all")
    assert _enqueue(db, "lead.mql", ruleset="huge") == 1
    with db() as session:
        [message] = session.scalars(select(OutboxMessage))
        assert message.payload["data"]["explanation"] is None
        assert message.payload["data"]["explanation_truncated"] is True


def test_nothing_is_queued_when_the_transaction_rolls_back(db: sessionmaker[Session]) -> None:
    add_subscription(db, "http://127.0.0.1:9/all")
    with db() as session:
        session.begin()
        enqueue_transitions(
            session,
            lead=LEAD,
            transitions=[Transition("lead.mql", "lead", "mql", utcnow(), "e")],
            event_id="e",
            ruleset_name="pmi",
            ruleset_version=1,
            explanation={},
        )
        session.rollback()
    with db() as session:
        assert list(session.scalars(select(OutboxMessage))) == []


def _lead(db: sessionmaker[Session]) -> str:
    with db() as session, session.begin():
        session.add(
            Lead(
                id="lead_t",
                email="t@x.it",
                attributes={},
                components={},
                models={},
                stage="mql",
                tier="cold",
                score=20,
                letter="B",
                ruleset_name="pmi",
                ruleset_version=2,
            )
        )
    return "lead_t"


def test_timers_fire_once_and_follow_rescoring(db: sessionmaker[Session]) -> None:
    add_subscription(db, "http://127.0.0.1:9/all")
    lead_id = _lead(db)
    now = utcnow()
    past, future = now - timedelta(minutes=5), now + timedelta(hours=4)
    sla: list[dict[str, str | None]] = [
        {"id": "first_contact", "stage": "mql", "due": past.isoformat(), "met_at": None},
        {"id": "confirm", "stage": "mql", "due": future.isoformat(), "met_at": None},
        {"id": "met", "stage": "mql", "due": past.isoformat(), "met_at": past.isoformat()},
    ]
    with db() as session, session.begin():
        schedule_timers(
            session, lead_id=lead_id, ruleset_name="pmi", sla=sla, requalify_due=past, tier="cold"
        )
    assert tick(db, now) == 2  # first_contact breached, requalify due
    assert tick(db, now) == 0  # once
    with db() as session:
        types = sorted(m.event_type for m in session.scalars(select(OutboxMessage)))
        assert types == ["lead.requalify_due", "lead.sla_breached"]
        breach = session.scalars(
            select(OutboxMessage).where(OutboxMessage.event_type == "lead.sla_breached")
        ).one()
        assert breach.payload["data"]["change"] == {"from": "mql", "to": "first_contact"}
        assert breach.payload["data"]["ruleset"] == {"name": "pmi", "version": 2}
    # A rescore meets "confirm" and moves the requalification: the timers follow.
    sla[1]["met_at"] = now.isoformat()
    with db() as session, session.begin():
        schedule_timers(
            session,
            lead_id=lead_id,
            ruleset_name="pmi",
            sla=sla[:2],
            requalify_due=future,
            tier="cold",
        )
    with db() as session:
        kinds = {t.kind: t for t in session.scalars(select(LeadTimer))}
        assert set(kinds) == {"sla:first_contact", "requalify"}
        assert kinds["requalify"].fired_at is None
        assert kinds["sla:first_contact"].fired_at is not None
    assert tick(db, future + timedelta(seconds=1)) == 1
