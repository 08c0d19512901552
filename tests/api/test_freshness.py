"""Fresh scores: the sweep re-scores leads whose points faded, and says so once.

Time is injected (``refresh_due(..., now)``); nothing sleeps. The ruleset is written for the test
so that the moments are easy to check: 80 points that halve every day, hot from 75.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from tests.conftest import TEST_ADMIN_KEY, make_settings

from leadscore_api.app import create_app
from leadscore_api.service.freshness import refresh_due
from leadscore_api.service.rulesets import RulesetRegistry
from leadscore_api.service.timers import tick as fire_timers
from leadscore_api.storage.delivery_models import LeadTimer, OutboxMessage
from leadscore_api.storage.migrate import upgrade_database
from leadscore_api.storage.models import Lead, ScoreChange

RULES = """
ruleset: cooling
version: 1
components:
  interest:
    max: 100
    decay: {half_life: 1d}
    actions:
      - {id: demo, on: demo.requested, points: 80}
      - {id: visit, on: page.viewed, points: 10}
      - {id: webinar, on: webinar.attended, points: 30}
tiers: {hot: 75, warm: 40, cold: 0}
stages:
  mql: {score: {gte: 50}}
"""


def cooling_app_on(database_url: str, tmp_path: Path) -> FastAPI:
    """The app on a migrated database, scoring with the test's ruleset alone."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "cooling.yaml").write_text(RULES, encoding="utf-8")
    settings = make_settings(database_url, rules_dir=rules, primary_ruleset="cooling")
    upgrade_database(settings.database_url)
    return create_app(settings)


@pytest.fixture
def cooling_app(database_url: str, tmp_path: Path) -> FastAPI:
    return cooling_app_on(database_url, tmp_path)


@pytest.fixture
def cooling(cooling_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(
        cooling_app, headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"}
    ) as test_client:
        yield test_client


def factory_of(client: TestClient) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = client.app.state.session_factory  # type: ignore[attr-defined]
    return factory


def registry_of(client: TestClient) -> RulesetRegistry:
    registry: RulesetRegistry = client.app.state.registry  # type: ignore[attr-defined]
    return registry


def post_event(client: TestClient, event_id: str, kind: str, at: datetime) -> str:
    body = {
        "id": event_id,
        "type": kind,
        "occurred_at": at.isoformat(),
        "lead": {"email": "giulia.bianchi@example.it"},
    }
    response = client.post("/v1/events", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()["results"][0]
    assert result["status"] == "accepted", result
    lead_id: str = result["lead_id"]
    return lead_id


def history(client: TestClient, lead_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/leads/{lead_id}/history")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def tier_messages(client: TestClient, lead_id: str) -> list[OutboxMessage]:
    with factory_of(client)() as session:
        return list(
            session.scalars(
                select(OutboxMessage).where(
                    OutboxMessage.lead_id == lead_id,
                    OutboxMessage.event_type == "lead.tier_changed",
                )
            )
        )


def test_decay_across_a_tier_boundary_is_one_row_and_one_webhook(cooling: TestClient) -> None:
    subscription = cooling.post(
        "/v1/subscriptions",
        json={"url": "http://127.0.0.1:9/hooks", "event_types": ["lead.tier_changed"]},
    )
    assert subscription.status_code == 201, subscription.text
    start = datetime.now(UTC) - timedelta(minutes=1)
    lead_id = post_event(cooling, "evt-demo", "demo.requested", start)
    assert cooling.get(f"/v1/leads/{lead_id}").json()["tier"] == "hot"
    with factory_of(cooling)() as session:
        lead = session.get(Lead, lead_id)
        assert lead is not None and lead.next_change_at is not None
        due = lead.next_change_at
    assert start < due < start + timedelta(days=1)

    # Before the lead is due, the sweep does not look at it.
    assert refresh_due(factory_of(cooling), registry_of(cooling), due - timedelta(seconds=5)) == 0

    # Three hours later 80 points are 73.4: warm. One sweep, one row, one webhook.
    later = start + timedelta(hours=3)
    assert refresh_due(factory_of(cooling), registry_of(cooling), later) == 1
    rows = history(cooling, lead_id)
    assert [row["cause"] for row in rows] == ["event", "time"]
    cooled = rows[-1]
    assert cooled["previous"]["tier"] == "hot" and cooled["current"]["tier"] == "warm"
    assert cooled["current"]["score"] == 73
    assert cooled["event_id"] is None
    assert "half-life 1d" in cooled["explanation"]["because"]
    assert datetime.fromisoformat(cooled["changed_at"]) == later
    assert [
        (m.payload["data"]["change"]["from"], m.payload["data"]["change"]["to"])
        for m in tier_messages(cooling, lead_id)
    ] == [("hot", "warm")]

    # A CRM listing hot leads gets the hot leads of now.
    hot = cooling.get("/v1/leads", params={"tier": "hot"}).json()["items"]
    warm = cooling.get("/v1/leads", params={"tier": "warm"}).json()["items"]
    assert [lead["id"] for lead in hot] == [] and [lead["id"] for lead in warm] == [lead_id]

    # The same sweep again changes nothing and says nothing.
    refresh_due(factory_of(cooling), registry_of(cooling), later)
    assert len(history(cooling, lead_id)) == 2
    assert len(tier_messages(cooling, lead_id)) == 1


def test_a_sweep_that_finds_no_visible_change_keeps_updated_at(cooling: TestClient) -> None:
    start = datetime.now(UTC) - timedelta(minutes=1)
    lead_id = post_event(cooling, "evt-visit", "page.viewed", start)
    before = cooling.get(f"/v1/leads/{lead_id}").json()
    with factory_of(cooling)() as session:
        lead = session.get(Lead, lead_id)
        assert lead is not None and lead.next_change_at is not None
        due = lead.next_change_at
    # 10 points round to 10 until they fall below 9.5, well after ``due``.
    assert refresh_due(factory_of(cooling), registry_of(cooling), due) == 1
    after = cooling.get(f"/v1/leads/{lead_id}").json()
    assert after["score"] == before["score"] == 10
    assert after["updated_at"] == before["updated_at"]
    assert len(history(cooling, lead_id)) == 1


def test_a_batch_gives_one_row_per_visible_change_dated_by_its_event(cooling: TestClient) -> None:
    start = datetime.now(UTC) - timedelta(hours=2)
    moments = [start + timedelta(minutes=n) for n in (1, 2, 3)]
    kinds = ["page.viewed", "webinar.attended", "demo.requested"]
    events: list[dict[str, Any]] = [
        {
            "id": f"evt-{n}",
            "type": kind,
            "occurred_at": moment.isoformat(),
            "lead": {"email": "marco.verdi@example.it"},
        }
        for n, (kind, moment) in enumerate(zip(kinds, moments, strict=True), start=1)
    ]
    response = cooling.post("/v1/events", json={"events": events})
    assert response.status_code == 200, response.text
    lead_id = response.json()["results"][0]["lead_id"]
    rows = history(cooling, lead_id)
    assert [row["event_id"] for row in rows] == ["evt-1", "evt-2", "evt-3"]
    assert [row["cause"] for row in rows] == ["event"] * 3
    assert [datetime.fromisoformat(row["changed_at"]) for row in rows] == moments
    assert [row["current"]["tier"] for row in rows] == ["cold", "warm", "hot"]
    assert rows[0]["previous"] is None and rows[0]["current"]["tier"] == "cold"
    assert [row["previous"]["tier"] for row in rows[1:]] == ["cold", "warm"]
    with factory_of(cooling)() as session:
        stored = session.scalars(
            select(ScoreChange.event_ids)
            .where(ScoreChange.lead_id == lead_id)
            .order_by(ScoreChange.id)
        )
        assert [list(ids or []) for ids in stored] == [["evt-1"], ["evt-2"], ["evt-3"]]


def test_two_sweeps_at_once_handle_each_due_lead_once(pg_url: str, tmp_path: Path) -> None:
    app = cooling_app_on(pg_url, tmp_path)
    start = datetime.now(UTC) - timedelta(minutes=1)
    with TestClient(app, headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"}) as client:
        events = [
            {
                "id": f"evt-many-{n}",
                "type": "demo.requested",
                "occurred_at": start.isoformat(),
                "lead": {"email": f"lead{n}@example.it"},
            }
            for n in range(120)
        ]
        response = client.post("/v1/events", json={"events": events})
        assert response.status_code == 200, response.text
        later = start + timedelta(hours=3)
        with ThreadPoolExecutor(max_workers=2) as pool:
            counts = list(
                pool.map(
                    lambda _: refresh_due(factory_of(client), registry_of(client), later),
                    range(2),
                )
            )
        assert sum(counts) == 120
        with factory_of(client)() as session:
            causes = list(
                session.scalars(select(ScoreChange.lead_id).where(ScoreChange.cause == "time"))
            )
        assert len(causes) == len(set(causes)) == 120


def test_an_old_event_does_not_restart_a_timer_that_ran_out(
    database_url: str, tmp_path: Path
) -> None:
    """A hand-over whose SLA was breached stays breached once: a late event dated before the
    deadline (a page view the tracker delivered late) re-scores the lead, not the timer."""
    settings = make_settings(database_url, primary_ruleset="bant")
    upgrade_database(settings.database_url)
    app = create_app(settings)
    week_ago = datetime.now(UTC).replace(microsecond=0) - timedelta(days=7)

    def event(event_id: str, kind: str, hours: float, **extra: Any) -> dict[str, Any]:
        return {
            "id": event_id,
            "type": kind,
            "occurred_at": (week_ago + timedelta(hours=hours)).isoformat(),
            "lead": {"email": "handover@example.it"},
            **extra,
        }

    with TestClient(app, headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"}) as client:
        stream = [
            event("h1", "demo.requested", 0, attributes={"purchase_intent": True}),
            event("h2", "page.viewed", 1, properties={"url": "/pricing"}),
            event("h3", "page.viewed", 2, properties={"url": "/prezzi"}),
        ]
        assert client.post("/v1/events", json={"events": stream}).status_code == 200
        factory = factory_of(client)
        now = datetime.now(UTC)
        assert fire_timers(factory, now) == 0  # no subscription: nothing queued, timers fire
        with factory() as session:
            fired = {t.kind: t.fired_at for t in session.scalars(select(LeadTimer))}
        breached = {kind for kind, moment in fired.items() if moment is not None}
        assert breached == {"sla:handover_confirmed", "sla:first_contact"}

        late = event("h-late", "page.viewed", 0.5, properties={"url": "/pricing"})
        assert client.post("/v1/events", json=late).json()["results"][0]["status"] == "accepted"
        with factory() as session:
            after = {t.kind: t.fired_at for t in session.scalars(select(LeadTimer))}
        assert after == fired
        assert fire_timers(factory, now + timedelta(minutes=1)) == 0
