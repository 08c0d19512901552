"""POST /v1/events: storage once, scoring, history, identity, ordering, bad input."""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.config import Settings
from leadscore_api.storage.models import Event, Outcome

from .helpers import BIG_MANUFACTURER, event, qualified_stream


def post(client: TestClient, body: object) -> list[dict[str, Any]]:
    response = client.post("/v1/events", json=body)
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def lead_of(client: TestClient, lead_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/leads/{lead_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_single_event_is_accepted_and_creates_the_lead(client: TestClient) -> None:
    [result] = post(client, event("form.submitted", id="e-1", attributes=BIG_MANUFACTURER))
    assert result["id"] == "e-1"
    assert result["status"] == "accepted"
    assert result["error"] is None
    assert result["unknown_type"] is False
    lead = lead_of(client, result["lead_id"])
    assert lead["email"] == "anna.rossi@metalpro.it"
    assert lead["attributes"]["employees"] == 250
    assert lead["letter"] == "A"
    assert lead["ruleset"]["name"] == "pmi-letter-score"
    assert isinstance(lead["ruleset"]["version"], int)
    assert "bant" in lead["models"]
    for key in (
        "id",
        "email",
        "external_id",
        "attributes",
        "letter",
        "score",
        "tier",
        "stage",
        "components",
        "next_action",
        "next_action_due",
        "owner",
        "ruleset",
        "models",
        "created_at",
        "updated_at",
    ):
        assert key in lead


def test_same_id_twice_is_applied_once(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    body = event("content.downloaded", id="dup-1")
    [first] = post(client, body)
    before = lead_of(client, first["lead_id"])
    [second] = post(client, body)
    assert second == {**first, "status": "duplicate"}
    after = lead_of(client, first["lead_id"])
    assert after["score"] == before["score"]
    assert after["components"] == before["components"]
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Event)) == 1


def test_batch_answers_in_input_order_and_rejects_only_the_bad_event(client: TestClient) -> None:
    good_1 = event("page.viewed", id="b-1", minutes=1)
    bad = event("page.viewed", id="b-2", minutes=2)
    del bad["occurred_at"]
    good_2 = event("email.opened", id="b-3", minutes=3)
    results = post(client, {"events": [good_1, bad, good_2, good_1]})
    assert [r["id"] for r in results] == ["b-1", "b-2", "b-3", "b-1"]
    assert [r["status"] for r in results] == ["accepted", "rejected", "accepted", "duplicate"]
    assert "occurred_at" in results[1]["error"]
    assert results[1]["lead_id"] is None
    assert results[3]["lead_id"] == results[0]["lead_id"]


def test_batch_items_with_wrong_types_are_rejected_naming_the_field(client: TestClient) -> None:
    items: list[object] = [
        "not an object",
        {**event(), "occurred_at": "yesterday"},
        {**event(), "occurred_at": "2026-01-01T10:00:00"},
        {**event(), "lead": {}},
        {**event(), "lead": {"email": "not-an-email"}},
        {**event(), "type": "Has Spaces"},
        {**event(), "properties": [1, 2]},
        {**event(), "surprise": True},
        {**event(), "id": 42},
    ]
    results = post(client, {"events": items})
    assert all(r["status"] == "rejected" for r in results)
    expected_fields = [
        "event",
        "occurred_at",
        "occurred_at",
        "lead",
        "lead.email",
        "type",
        "properties",
        "surprise",
        "id",
    ]
    for result, field in zip(results, expected_fields, strict=True):
        assert field in result["error"], (field, result["error"])


def test_unknown_types_are_stored_and_score_nothing(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    [first] = post(client, event("form.submitted", attributes=BIG_MANUFACTURER))
    before = lead_of(client, first["lead_id"])
    [result] = post(client, event("chat.started", id="weird-1", properties={"x": 1}))
    assert result["status"] == "accepted"
    assert result["unknown_type"] is True
    after = lead_of(client, first["lead_id"])
    assert after["score"] == before["score"]
    with session_factory() as session:
        stored = session.scalars(select(Event).where(Event.id == "weird-1")).one()
        assert stored is not None and stored.type == "chat.started"


def test_raw_platform_payload_is_kept(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    post(client, event(id="raw-1", raw={"sg_event_id": "abc", "nested": [1, 2]}))
    with session_factory() as session:
        stored = session.scalars(select(Event).where(Event.id == "raw-1")).one()
        assert stored is not None
        assert stored.raw == {"sg_event_id": "abc", "nested": [1, 2]}


def test_crm_outcomes_are_recorded(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    post(client, event("deal.won", id="won-1", properties={"amount": 12000}))
    with session_factory() as session:
        outcome = session.scalar(select(Outcome).where(Outcome.event_id == "won-1"))
        assert outcome is not None and outcome.type == "deal.won" and outcome.amount == 12000


def test_future_events_are_rejected(client: TestClient) -> None:
    body = event()
    body["occurred_at"] = "2999-01-01T00:00:00Z"
    [result] = post(client, {"events": [body]})
    assert result["status"] == "rejected"
    assert "occurred_at" in result["error"]


def test_out_of_order_arrival_gives_the_in_order_state(client: TestClient) -> None:
    stream = qualified_stream("order@metalpro.it")
    in_order = post(client, {"events": stream})
    lead_in_order = lead_of(client, in_order[0]["lead_id"])

    shuffled = [
        {**item, "id": "s-" + item["id"], "lead": {"email": "shuffled@metalpro.it"}}
        for item in stream
    ]
    random.Random(7).shuffle(shuffled)
    lead_id = None
    for item in shuffled:  # one request each, so most arrive "late"
        [result] = post(client, item)
        lead_id = result["lead_id"]
    assert lead_id is not None
    lead_shuffled = lead_of(client, lead_id)
    for key in ("letter", "score", "tier", "stage", "attributes", "next_action"):
        assert lead_shuffled[key] == lead_in_order[key], key
    # Components decay continuously and are kept to 4 decimals; the two leads were scored a
    # moment apart, which can move the last decimal.
    assert lead_shuffled["components"] == pytest.approx(lead_in_order["components"], abs=1e-3)


def test_history_records_each_change_with_ruleset_and_explanation(client: TestClient) -> None:
    stream = qualified_stream()
    results = post(client, {"events": stream[:-1]})
    lead_id = results[0]["lead_id"]
    [last] = post(client, stream[-1])
    response = client.get(f"/v1/leads/{lead_id}/history")
    assert response.status_code == 200
    items = response.json()["items"]
    primary = [i for i in items if i["ruleset"]["name"] == "pmi-letter-score"]
    # a batch gives one row per visible change, each naming the event that made it and
    # listing the events folded in since the row before (each event once, in order)
    batch_ids = [e["id"] for e in stream[:-1]]
    batch_rows = [i for i in primary if i["event_id"] in batch_ids]
    assert len(batch_rows) > 1
    assert batch_rows[0]["previous"] is None
    folded = [event_id for row in batch_rows for event_id in row["event_ids"]]
    assert folded == batch_ids[: len(folded)]
    for row in batch_rows:
        assert row["event_id"] == row["event_ids"][-1]
        event = next(e for e in stream if e["id"] == row["event_id"])
        changed = datetime.fromisoformat(row["changed_at"].replace("Z", "+00:00"))
        assert changed == datetime.fromisoformat(event["occurred_at"].replace("Z", "+00:00"))
    # a later request that changes a summary is a later change, from the previous summary
    later = [i for i in items if i["event_id"] == last["id"]]
    assert later
    for item in later:
        earlier = [i for i in items if i["ruleset"] == item["ruleset"] and i["id"] < item["id"]]
        assert item["previous"] == earlier[-1]["current"]
    for item in items:
        assert item["cause"] == "event"
        assert item["explanation"]
        assert isinstance(item["ruleset"]["version"], int)
        assert item["event_type"] is not None
    assert {i["ruleset"]["name"] for i in items} == {"pmi-letter-score", "bant"}
    assert primary[-1]["current"]["score"] == lead_of(client, lead_id)["score"]


def test_identity_by_external_id_and_email(client: TestClient) -> None:
    [first] = post(client, event(email=None, external_id="crm-1"))
    [second] = post(client, event(email="new@x.it", external_id="crm-1"))
    assert second["lead_id"] == first["lead_id"]
    [third] = post(client, event(email="NEW@X.IT ", external_id=None))
    assert third["lead_id"] == first["lead_id"]
    lead = lead_of(client, first["lead_id"])
    assert lead["email"] == "new@x.it" and lead["external_id"] == "crm-1"


def test_conflicting_identities_attach_to_the_email_lead_with_a_warning(
    client: TestClient,
) -> None:
    [by_email] = post(client, event(email="x@a.it"))
    [by_ext] = post(client, event(email=None, external_id="crm-9"))
    assert by_email["lead_id"] != by_ext["lead_id"]
    [both] = post(client, event(id="both-1", email="x@a.it", external_id="crm-9"))
    assert both["status"] == "accepted"
    assert both["lead_id"] == by_email["lead_id"]
    assert both["warning"] and by_ext["lead_id"] in both["warning"]
    # nothing lost, nothing merged: both leads still exist
    assert client.get(f"/v1/leads/{by_ext['lead_id']}").status_code == 200


def test_bodies_that_are_not_events(client: TestClient) -> None:
    cases: list[tuple[bytes, int, str | None]] = [
        (b"{not json", 400, None),
        (b"", 400, None),
        (b"[1, 2]", 422, "body"),
        (b'"text"', 422, "body"),
        (b'{"events": "nope"}', 422, "events"),
        (b'{"events": [], "extra": 1}', 422, "extra"),
        (b'{"id": "x", "type": "page.viewed"}', 422, "occurred_at"),
    ]
    for raw, status, field in cases:
        response = client.post(
            "/v1/events", content=raw, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == status, (raw, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        problem = response.json()
        assert problem["status"] == status and problem["title"] and problem["detail"]
        if field is not None:
            assert field in [e["field"] for e in problem["errors"]], problem


def test_batch_size_limit(client: TestClient, settings: Settings) -> None:
    body = {"events": [event() for _ in range(settings.max_batch_size + 1)]}
    response = client.post("/v1/events", json=body)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "events"


def test_empty_batch_is_fine(client: TestClient) -> None:
    assert post(client, {"events": []}) == []


def test_internal_event_types_and_unicode_survive(client: TestClient) -> None:
    [result] = post(
        client,
        event(
            "form.submitted",
            email="zoë@müller.de",
            attributes={"company": "Caffè Ñandú", "role": "Responsabile acquisti"},
        ),
    )
    lead = lead_of(client, result["lead_id"])
    assert lead["attributes"]["company"] == "Caffè Ñandú"


def test_the_encoded_answer_matches_the_documented_result_model() -> None:
    """The route encodes results itself; they must stay what ``EventResultOut`` documents."""
    from leadscore_api.api.events import EventResultOut, _result_json
    from leadscore_api.service.ingestion import EventResult

    for result in (
        EventResult("e1", "accepted", lead_id="lead_1", warning="look", unknown_type=True),
        EventResult(None, "rejected", error="occurred_at: is missing"),
        EventResult("e2", "duplicate", lead_id="lead_2"),
    ):
        assert _result_json(result) == EventResultOut.of(result).model_dump()
