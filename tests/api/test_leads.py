"""The CRM API: lookup, lists and cursors, history, explain, update, merge, erasure."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.storage.models import Erasure, Event, LeadIdentity, ScoreChange

from .helpers import BIG_MANUFACTURER, event, qualified_stream


def ingest(client: TestClient, *events: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.post("/v1/events", json={"events": list(events)})
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    assert all(r["status"] in ("accepted", "duplicate") for r in results), results
    return results


def make_lead(client: TestClient, email: str, **attributes: Any) -> str:
    [result] = ingest(client, event("form.submitted", email=email, attributes=attributes))
    lead_id: str = result["lead_id"]
    return lead_id


def test_lookup_by_email_and_external_id(client: TestClient) -> None:
    [result] = ingest(client, event(email="Mario@Rossi.IT", external_id="crm-7"))
    for query in ("email=mario@rossi.it", "email=MARIO%40ROSSI.IT", "external_id=crm-7"):
        response = client.get(f"/v1/leads?{query}")
        assert response.status_code == 200
        body = response.json()
        assert [lead["id"] for lead in body["items"]] == [result["lead_id"]], query
        assert body["next_cursor"] is None
    assert client.get("/v1/leads?email=nobody@x.it").json() == {"items": [], "next_cursor": None}


def test_unknown_lead_is_404_on_every_route(client: TestClient) -> None:
    for method, path, body in (
        ("GET", "/v1/leads/lead_nope", None),
        ("GET", "/v1/leads/lead_nope/history", None),
        ("GET", "/v1/leads/lead_nope/explain", None),
        ("PATCH", "/v1/leads/lead_nope", {"attributes": {"role": "CEO"}}),
        ("POST", "/v1/leads/lead_nope/merge", {"other_lead_id": "lead_other"}),
        ("DELETE", "/v1/leads/lead_nope", None),
    ):
        response = client.request(method, path, json=body)
        assert response.status_code == 404, (method, path, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "lead_nope" in response.json()["detail"]


def test_list_filters(client: TestClient) -> None:
    strong = ingest(client, *qualified_stream("strong@x.it"))[0]["lead_id"]
    weak = make_lead(client, "weak@x.it", role="intern", employees=3)
    strong_lead = client.get(f"/v1/leads/{strong}").json()
    weak_lead = client.get(f"/v1/leads/{weak}").json()
    assert strong_lead["score"] > weak_lead["score"]

    def ids(query: str) -> set[str]:
        response = client.get(f"/v1/leads?{query}")
        assert response.status_code == 200, response.text
        return {lead["id"] for lead in response.json()["items"]}

    assert ids(f"min_score={strong_lead['score']}") == {strong}
    assert ids(f"letter={strong_lead['letter']}") >= {strong}
    assert weak not in ids(f"letter={strong_lead['letter']}")
    assert ids(f"stage={strong_lead['stage']}") >= {strong}
    assert strong in ids(f"tier={strong_lead['tier']}")
    assert ids("updated_since=2999-01-01T00:00:00Z") == set()
    assert ids("updated_since=2000-01-01T00:00:00Z") == {strong, weak}
    assert ids("owner=nobody-owns-this") == set()


def test_cursor_pagination_visits_every_lead_once(client: TestClient) -> None:
    created = {make_lead(client, f"p{i}@x.it") for i in range(7)}
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        url = "/v1/leads?limit=3" + (f"&cursor={cursor}" if cursor else "")
        body = client.get(url).json()
        seen.extend(lead["id"] for lead in body["items"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert sorted(seen) == sorted(created)


def test_bad_cursors_and_bad_query_values(client: TestClient) -> None:
    lead_id = make_lead(client, "c@x.it")
    for cursor in ("garbage", "eyJrIjoibGVhZHMifQ", "eyJrIjoiaGlzdG9yeSIsInYiOlsxXX0"):
        response = client.get(f"/v1/leads?cursor={cursor}")
        assert response.status_code == 400, (cursor, response.text)
        assert response.json()["errors"][0]["field"] == "cursor"
    # A NUL is refused before any route, like in every query value (docs/errors.md).
    response = client.get("/v1/leads?cursor=%00")
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "cursor"
    response = client.get(f"/v1/leads/{lead_id}/history?cursor=garbage")
    assert response.status_code == 400
    for query, field in (
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("limit=100000", "limit"),
        ("min_score=-1", "min_score"),
        ("min_score=high", "min_score"),
        ("updated_since=yesterday", "updated_since"),
        ("updated_since=2026-01-01T00:00:00", "updated_since"),
    ):
        response = client.get(f"/v1/leads?{query}")
        assert response.status_code == 422, (query, response.text)
        assert response.json()["errors"][0]["field"] == field


def test_history_pagination(client: TestClient) -> None:
    lead_id = ingest(client, *qualified_stream("h@x.it"))[0]["lead_id"]
    everything = client.get(f"/v1/leads/{lead_id}/history?limit=500").json()["items"]
    seen: list[str] = []
    cursor: str | None = None
    while True:
        url = f"/v1/leads/{lead_id}/history?limit=2" + (f"&cursor={cursor}" if cursor else "")
        body = client.get(url).json()
        seen.extend(item["id"] for item in body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [item["id"] for item in everything]


def test_explain_breaks_the_score_down(client: TestClient) -> None:
    lead_id = ingest(client, *qualified_stream("e@x.it"))[0]["lead_id"]
    lead = client.get(f"/v1/leads/{lead_id}").json()
    response = client.get(f"/v1/leads/{lead_id}/explain")
    assert response.status_code == 200
    body = response.json()
    assert body["lead_id"] == lead_id
    assert body["score"] == lead["score"]
    assert set(body["components"]) == set(lead["components"])
    assert "score_exact" in body and body["explanation"]
    assert "bant" in body["models"]


def test_patch_attributes_rescores_and_is_replayable(client: TestClient) -> None:
    lead_id = make_lead(client, "patch@x.it", role="intern", employees=2)
    before = client.get(f"/v1/leads/{lead_id}").json()
    response = client.patch(
        f"/v1/leads/{lead_id}", json={"attributes": {**BIG_MANUFACTURER, "role": None}}
    )
    assert response.status_code == 200, response.text
    after = response.json()
    assert "role" not in after["attributes"]
    assert after["attributes"]["employees"] == 250
    assert after["components"]["fit"] > before["components"]["fit"]
    history = client.get(f"/v1/leads/{lead_id}/history").json()["items"]
    assert history[-1]["cause"] == "attributes"
    assert history[-1]["event_type"] == "lead.attributes_updated"

    # a late event forces a replay from stored events: the API update must survive it
    late = event("page.viewed", email="patch@x.it", minutes=-60, properties={"url": "/pricing"})
    ingest(client, late)
    replayed = client.get(f"/v1/leads/{lead_id}").json()
    assert "role" not in replayed["attributes"]
    assert replayed["attributes"]["employees"] == 250


def test_patch_rejects_bad_bodies(client: TestClient) -> None:
    lead_id = make_lead(client, "badpatch@x.it")
    for body, field in (
        ({}, "attributes"),
        ({"attributes": "CEO"}, "attributes"),
        ({"attributes": {}, "score": 100}, "score"),
    ):
        response = client.patch(f"/v1/leads/{lead_id}", json=body)
        assert response.status_code == 422, (body, response.text)
        assert field in [e["field"] for e in response.json()["errors"]]


def test_merge_combines_histories_and_identities(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    stream = qualified_stream("one@x.it")
    first_half = ingest(client, *stream[:3])
    second_half = [{**item, "lead": {"external_id": "crm-merge"}} for item in stream[3:]]
    other = ingest(client, *second_half)
    target_id, other_id = first_half[0]["lead_id"], other[0]["lead_id"]
    assert target_id != other_id

    reference = ingest(
        client,
        *[{**item, "id": "ref-" + item["id"], "lead": {"email": "ref@x.it"}} for item in stream],
    )[0]["lead_id"]

    response = client.post(f"/v1/leads/{target_id}/merge", json={"other_lead_id": other_id})
    assert response.status_code == 200, response.text
    merged = response.json()
    expected = client.get(f"/v1/leads/{reference}").json()
    for key in ("letter", "score", "tier", "stage", "attributes"):
        assert merged[key] == expected[key], key
    # Components decay continuously and are kept to 4 decimals: the reference was scored a
    # moment before the merge, which can move the last decimal (seen as a rare flaky failure).
    assert merged["components"] == pytest.approx(expected["components"], abs=1e-3)
    assert merged["external_id"] == "crm-merge"
    assert client.get(f"/v1/leads/{other_id}").status_code == 404
    found = client.get("/v1/leads?external_id=crm-merge").json()["items"]
    assert [lead["id"] for lead in found] == [target_id]
    history = client.get(f"/v1/leads/{target_id}/history?limit=500").json()["items"]
    folded = {event_id for item in history for event_id in item["event_ids"]}
    assert folded >= {item["id"] for item in second_half}
    assert history[-1]["cause"] == "merge"
    with session_factory() as session:
        assert (
            session.scalar(select(func.count()).select_from(Event).where(Event.lead_id == other_id))
            == 0
        )


def test_merge_rejects_bad_requests(client: TestClient) -> None:
    lead_id = make_lead(client, "m@x.it")
    assert client.post(f"/v1/leads/{lead_id}/merge", json={}).status_code == 422
    response = client.post(f"/v1/leads/{lead_id}/merge", json={"other_lead_id": lead_id})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "other_lead_id"
    response = client.post(f"/v1/leads/{lead_id}/merge", json={"other_lead_id": "lead_ghost"})
    assert response.status_code == 404
    assert "lead_ghost" in response.json()["detail"]


def test_erasure_removes_personal_data_and_keeps_counts(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    results = ingest(client, *qualified_stream("gdpr@x.it"))
    lead_id = results[0]["lead_id"]
    keep = make_lead(client, "other@x.it")
    response = client.delete(f"/v1/leads/{lead_id}")
    assert response.status_code == 204
    assert client.get(f"/v1/leads/{lead_id}").status_code == 404
    assert client.get("/v1/leads?email=gdpr@x.it").json()["items"] == []
    assert client.delete(f"/v1/leads/{lead_id}").status_code == 404
    with session_factory() as session:
        assert (
            session.scalar(select(func.count()).select_from(Event).where(Event.lead_id == lead_id))
            == 0
        )
        assert (
            session.scalar(
                select(func.count())
                .select_from(LeadIdentity)
                .where(LeadIdentity.value == "gdpr@x.it")
            )
            == 0
        )
        assert (
            session.scalar(
                select(func.count()).select_from(ScoreChange).where(ScoreChange.lead_id == lead_id)
            )
            == 0
        )
        erasure = session.scalar(select(Erasure))
        assert erasure is not None and erasure.events == len(results)
    assert client.get(f"/v1/leads/{keep}").status_code == 200
