"""The lead-management procedure on the default configuration (guide model, bundled rules).

A hot lead is routed to a person, raises the hand-over SLA alarms once when sales does not
answer, none when it does, and its tier workflow's follow-up reminder; time is injected into
the timer round (``tick(factory, now)``), nothing sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from tests.conftest import TEST_ADMIN_KEY, make_settings

from leadscore_api.app import create_app
from leadscore_api.service.timers import tick
from leadscore_api.storage.delivery_models import OutboxMessage
from leadscore_api.storage.migrate import upgrade_database

COMPANY = {
    "industry": "manifatturiero",
    "employees": 1200,
    "annual_revenue_eur": 5_000_000,
    "region": "Lombardia",
}


@pytest.fixture
def default_app(database_url: str) -> FastAPI:
    settings = make_settings(database_url, sync_rep_directory=True)
    upgrade_database(settings.database_url)
    return create_app(settings)


@pytest.fixture
def service(default_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(default_app, headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"}) as client:
        created = client.post(
            "/v1/subscriptions", json={"url": "http://127.0.0.1:9/crm", "event_types": ["*"]}
        )
        assert created.status_code == 201, created.text
        yield client


def factory_of(client: TestClient) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = client.app.state.session_factory  # type: ignore[attr-defined]
    return factory


def a85(email: str, start: datetime) -> list[dict[str, Any]]:
    """The guide's A85 lead: 5 pricing visits on 5 days, then a white paper (hot, MQL)."""
    events: list[dict[str, Any]] = [
        {
            "id": f"{email}-visit-{n}",
            "type": "page.viewed",
            "occurred_at": (start + timedelta(days=n)).isoformat(),
            "lead": {"email": email},
            "properties": {"url": "https://metalpro.it/prezzi"},
            "attributes": {"role": "Responsabile acquisti", **COMPANY} if n == 0 else {},
        }
        for n in range(5)
    ]
    events.append(
        {
            "id": f"{email}-paper",
            "type": "content.downloaded",
            "occurred_at": (start + timedelta(days=4, hours=1)).isoformat(),
            "lead": {"email": email},
            "properties": {"title": "white paper"},
        }
    )
    return events


def crm(email: str, kind: str, at: datetime) -> dict[str, Any]:
    return {
        "id": f"{email}-{kind}",
        "type": kind,
        "occurred_at": at.isoformat(),
        "lead": {"email": email},
    }


def ingest(client: TestClient, events: list[dict[str, Any]]) -> str:
    response = client.post("/v1/events", json={"events": events})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert all(r["status"] == "accepted" for r in results), results
    lead_id: str = results[0]["lead_id"]
    return lead_id


def messages(client: TestClient, lead_id: str, kind: str) -> list[dict[str, Any]]:
    with factory_of(client)() as session:
        rows = session.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.lead_id == lead_id, OutboxMessage.event_type == kind)
            .order_by(OutboxMessage.created_at, OutboxMessage.id)
        )
        return [dict(row.payload) for row in rows]


def test_a_hot_lead_nobody_answers_is_routed_raises_each_sla_once_and_a_follow_up(
    service: TestClient,
) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=6)
    lead_id = ingest(service, a85("anna.rossi@metalpro.it", start))
    lead = service.get(f"/v1/leads/{lead_id}").json()
    assert (lead["letter"], lead["score"], lead["tier"], lead["stage"]) == ("A", 85, "hot", "mql")
    assert lead["team"] == "key-accounts"
    reps = service.get("/v1/reps", params={"team": "key-accounts"}).json()["items"]
    assert lead["owner"] in {rep["id"] for rep in reps}

    now = datetime.now(UTC)
    tick(factory_of(service), now)
    breaches = messages(service, lead_id, "lead.sla_breached")
    assert sorted(b["data"]["change"]["to"] for b in breaches) == [
        "first_contact",
        "handover_confirmed",
    ]
    for breach in breaches:
        assert breach["data"]["explanation"]["overdue_seconds"] > 0
        assert breach["data"]["lead"]["owner"] == lead["owner"]
    tick(factory_of(service), now + timedelta(minutes=5))
    assert len(messages(service, lead_id, "lead.sla_breached")) == 2  # once per breach

    # Hot: follow up within 3 working days of becoming hot (the fifth visit, 2 days ago).
    tick(factory_of(service), now + timedelta(days=7))
    follow_ups = messages(service, lead_id, "lead.followup_due")
    assert [f["data"]["change"]["to"] for f in follow_ups] == ["follow_up_call"]
    tick(factory_of(service), now + timedelta(days=8))
    assert len(messages(service, lead_id, "lead.followup_due")) == 1


def test_a_lead_sales_accepts_and_contacts_in_time_raises_no_alarm(service: TestClient) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=6)
    stream = a85("marco.bianchi@metalpro.it", start)
    # Fit 50 and the first pricing visit make 55 with letter A: the hand-over is at ``start``.
    stream += [
        crm("marco.bianchi@metalpro.it", "lead.accepted", start + timedelta(minutes=1)),
        crm("marco.bianchi@metalpro.it", "lead.contacted", start + timedelta(hours=2)),
    ]
    lead_id = ingest(service, stream)
    tick(factory_of(service), datetime.now(UTC))
    assert messages(service, lead_id, "lead.sla_breached") == []
    explained = service.get(f"/v1/leads/{lead_id}/explain").json()
    met = {item["id"]: item for item in explained["sla"]}
    assert met["handover_confirmed"]["met_at"] and not met["handover_confirmed"]["breached"]
    assert met["first_contact"]["met_at"] and not met["first_contact"]["breached"]


def test_a_warm_lead_gets_a_follow_up_every_week(service: TestClient) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    email = "sara.verdi@example.it"
    events = [
        {
            "id": f"{email}-form",
            "type": "form.submitted",
            "occurred_at": start.isoformat(),
            "lead": {"email": email},
            "attributes": {"role": "Responsabile acquisti", **COMPANY},
        }
    ]
    lead_id = ingest(service, events)
    assert service.get(f"/v1/leads/{lead_id}").json()["tier"] == "warm"  # fit 50, no behaviour
    now = datetime.now(UTC)
    for week in (1, 2, 3):
        tick(factory_of(service), now + timedelta(days=7 * week))
    reminders = messages(service, lead_id, "lead.followup_due")
    assert [r["data"]["change"]["to"] for r in reminders] == ["follow_up_email"] * 3
