"""One crossing is one message: a late event that moves the moment a lead became MQL does not
make subscribers hear ``lead.mql`` twice."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from tests.api.helpers import event

#: Fit 40 (letter B): MQL needs 10 behaviour points (score ≥ 50).
HR_MANAGER = {
    "role": "HR manager",
    "employees": 250,
    "industry": "manufacturing",
    "annual_revenue_eur": 5_000_000,
}
EMAIL = "giulia.bianchi@metalpro.it"


def _messages(client: TestClient, lead_id: str) -> list[dict[str, Any]]:
    response = client.get("/v1/deliveries", params={"lead_id": lead_id, "limit": 100})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return sorted(items, key=lambda m: m["created_at"])


def _send(client: TestClient, body: dict[str, Any]) -> str:
    response = client.post("/v1/events", json=body)
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert result["status"] == "accepted", result
    lead_id: str = result["lead_id"]
    return lead_id


def test_a_late_event_that_undoes_then_redoes_the_mql_crossing_sends_one_lead_mql(
    client: TestClient,
) -> None:
    created = client.post(
        "/v1/subscriptions",
        json={"url": "http://127.0.0.1:9/hook", "event_types": ["lead.mql", "lead.stage_changed"]},
    )
    assert created.status_code == 201, created.text
    lead_id = _send(client, event("form.submitted", minutes=0, email=EMAIL, attributes=HR_MANAGER))
    _send(client, event("page.viewed", minutes=10, email=EMAIL, properties={"url": "/pricing"}))
    # +10: score 55, MQL; subscribers are told.
    _send(client, event("content.downloaded", minutes=20, email=EMAIL))
    # Arrives late, dated before the download: replayed, the lead was never MQL (45).
    _send(client, event("email.unsubscribed", minutes=15, email=EMAIL))
    # MQL again (55): the same crossing, moved later by the late event.
    _send(client, event("webinar.attended", minutes=30, email=EMAIL))

    lead = client.get(f"/v1/leads/{lead_id}").json()
    assert (lead["stage"], lead["score"]) == ("mql", 55)
    messages = _messages(client, lead_id)
    assert [m["type"] for m in messages if m["type"] == "lead.mql"] == ["lead.mql"]
    # The current stage is still followed both ways.
    changes = [
        (m["payload"]["data"]["change"]["from"], m["payload"]["data"]["change"]["to"])
        for m in messages
        if m["type"] == "lead.stage_changed"
    ]
    assert changes == [("lead", "mql"), ("mql", "lead"), ("lead", "mql")]
