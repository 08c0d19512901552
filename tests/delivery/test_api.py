"""Subscriptions and deliveries API, and the whole path: event -> outbox -> signed delivery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook
from tests.conftest import MakeApiKey
from tests.receiver import Receiver, Reply

from leadscore_api.app import create_app
from leadscore_api.config import Settings
from leadscore_api.storage.delivery_models import OutboxMessage
from leadscore_api.storage.migrate import upgrade_database

from .conftest import auth, drive, make_worker, qualified_stream


def _create(client: TestClient, url: str, **body: object) -> dict[str, Any]:
    payload = {"url": url, "event_types": ["lead.mql", "lead.sql"], **body}
    response = client.post("/v1/subscriptions", json=payload)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def _problem(response: httpx2.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
    return body


def _now() -> str:
    return datetime.now(UTC).isoformat()


def test_subscription_crud(client: TestClient, receiver: Receiver) -> None:
    created = _create(
        client,
        receiver.url,
        description="CRM",
        filters={"ruleset": "pmi-letter-score", "letter": "A", "tier": ["hot", "warm"]},
    )
    assert created["secret"].startswith("whsec_")
    assert created["filters"] == {
        "ruleset": "pmi-letter-score",
        "letter": ["A"],
        "tier": ["hot", "warm"],
    }
    sub_id = created["id"]
    shown = client.get(f"/v1/subscriptions/{sub_id}").json()
    assert "secret" not in shown and shown["enabled"] is True
    assert [s["id"] for s in client.get("/v1/subscriptions").json()["items"]] == [sub_id]

    patched = client.patch(
        f"/v1/subscriptions/{sub_id}", json={"event_types": ["*"], "description": None}
    ).json()
    assert patched["event_types"] == ["*"] and patched["description"] is None
    disabled = client.post(f"/v1/subscriptions/{sub_id}/disable").json()
    assert disabled["enabled"] is False and disabled["disabled_reason"]
    assert client.get("/v1/subscriptions", params={"enabled": "true"}).json()["items"] == []
    enabled = client.post(f"/v1/subscriptions/{sub_id}/enable").json()
    assert enabled["enabled"] is True and enabled["disabled_reason"] is None

    assert client.delete(f"/v1/subscriptions/{sub_id}").status_code == 204
    _problem(client.get(f"/v1/subscriptions/{sub_id}"), 404)
    _problem(client.delete(f"/v1/subscriptions/{sub_id}"), 404)


def test_bad_input_is_a_problem_naming_the_field(client: TestClient, receiver: Receiver) -> None:
    _problem(
        client.post("/v1/subscriptions", json={"url": receiver.url, "event_types": ["lead.x"]}),
        422,
        "event_types[0]",
    )
    _problem(
        client.post("/v1/subscriptions", json={"url": "ftp://x.it/", "event_types": ["*"]}),
        422,
        "url",
    )
    _problem(client.post("/v1/subscriptions", json={"event_types": ["*"]}), 422, "url")
    _problem(
        client.post(
            "/v1/subscriptions",
            json={"url": receiver.url, "event_types": ["*"], "filters": {"letter": "Z"}},
        ),
        422,
        "filters.letter[0]",
    )
    _problem(client.post("/v1/subscriptions", content=b"{nope"), 422)
    _problem(client.get("/v1/deliveries", params={"status": "lost"}), 422, "status")
    _problem(client.get("/v1/deliveries", params={"since": "yesterday"}), 422, "since")
    _problem(client.post("/v1/deliveries/replay", json={"since": "2026-01-01T00:00:00"}), 422)
    _problem(
        client.post("/v1/deliveries/replay", json={"since": _now(), "until": "2020-01-01T00:00Z"}),
        422,
        "until",
    )
    _problem(client.post("/v1/deliveries/msg_nope/retry"), 404)
    _problem(client.get("/v1/deliveries/msg_nope"), 404)
    sub = _create(client, receiver.url)
    _problem(
        client.post(f"/v1/subscriptions/{sub['id']}/rotate-secret", json={"overlap_seconds": -1}),
        422,
        "overlap_seconds",
    )


def test_private_targets_refused_when_not_allowed(settings: Settings) -> None:
    upgrade_database(settings.database_url)
    strict = settings.model_copy(update={"webhook_allow_private_targets": False})
    app = create_app(strict)
    key = settings.admin_api_key or ""
    with TestClient(app, headers=auth(key), raise_server_exceptions=False) as http:
        for url in ("http://127.0.0.1:9/x", "http://169.254.169.254/latest", "http://[::1]/"):
            body = _problem(
                http.post("/v1/subscriptions", json={"url": url, "event_types": ["*"]}), 422, "url"
            )
            assert "LEADSCORE_WEBHOOK_ALLOW_PRIVATE_TARGETS" in body["detail"]


def test_scope_is_required(
    client: TestClient, anon_client: TestClient, make_api_key: MakeApiKey
) -> None:
    _problem(anon_client.get("/v1/subscriptions"), 401)
    reader = make_api_key("leads:read")
    _problem(anon_client.get("/v1/deliveries", headers=auth(reader)), 403)
    admin = make_api_key("webhooks:admin")
    assert anon_client.get("/v1/deliveries", headers=auth(admin)).status_code == 200


def test_lead_crossing_thresholds_is_delivered_signed(
    client: TestClient, session_factory: sessionmaker[Session], receiver: Receiver
) -> None:
    sub = _create(client, receiver.url)
    other = _create(client, receiver.url + "/d-only", filters={"letter": ["D"]})
    results = client.post("/v1/events", json={"events": qualified_stream("mql@x.it")}).json()
    lead_id = results["results"][0]["lead_id"]

    queued = client.get("/v1/deliveries", params={"subscription_id": sub["id"]}).json()["items"]
    assert {m["type"] for m in queued} >= {"lead.mql"}
    assert {m["status"] for m in queued} == {"pending"}
    assert client.get("/v1/deliveries", params={"subscription_id": other["id"]}).json() == {
        "items": [],
        "next_cursor": None,
    }

    worker = make_worker(session_factory)
    assert drive(worker, lambda: len(receiver.delivered()) == len(queued))
    by_type = {}
    for request in receiver.delivered():
        payload = Webhook(sub["secret"]).verify(request.body, request.headers)
        by_type[payload["type"]] = (request, payload)
    _, mql = by_type["lead.mql"]
    data = mql["data"]
    assert data["lead"]["id"] == lead_id and data["lead"]["email"] == "mql@x.it"
    assert data["lead"]["letter"] == "A"
    assert set(data["lead"]) >= {"score", "tier", "stage", "owner", "next_action", "external_id"}
    assert data["change"]["to"] == "mql"
    assert data["event_id"].startswith("evt-")
    assert data["ruleset"]["name"] == "pmi-letter-score" and data["ruleset"]["version"] >= 1
    assert isinstance(data["explanation"], dict) and data["explanation"]
    assert mql["timestamp"].endswith("Z")

    delivered = client.get(
        "/v1/deliveries", params={"status": "delivered", "type": "lead.mql", "lead_id": lead_id}
    ).json()["items"]
    assert len(delivered) == 1
    detail = client.get(f"/v1/deliveries/{delivered[0]['id']}").json()
    assert detail["attempts"] == 1 and detail["attempt_log"][0]["status_code"] == 200
    attempts = client.get(f"/v1/deliveries/{delivered[0]['id']}/attempts").json()["items"]
    assert attempts == detail["attempt_log"]


def test_retry_replay_and_ping(
    client: TestClient, session_factory: sessionmaker[Session], receiver: Receiver
) -> None:
    sub = _create(client, receiver.url, event_types=["*"])
    client.post("/v1/events", json={"events": qualified_stream("replay@x.it")})
    worker = make_worker(session_factory, retry_delays=(0.0,))
    receiver.default = Reply(500)
    total = len(client.get("/v1/deliveries").json()["items"])
    assert total >= 2
    assert drive(
        worker,
        lambda: (
            len(client.get("/v1/deliveries", params={"status": "failed"}).json()["items"]) == total
        ),
    )
    # The receiver recovers; one message retried now, then the whole outage replayed.
    receiver.default = Reply(200)
    failed = client.get("/v1/deliveries", params={"status": "failed", "limit": 1}).json()
    assert failed["next_cursor"] is not None
    one = failed["items"][0]["id"]
    retried = client.post(f"/v1/deliveries/{one}/retry")
    assert retried.status_code == 202 and retried.json()["status"] == "pending"
    assert drive(worker, lambda: len(receiver.delivered()) == 1)
    assert receiver.delivered()[0].webhook_id == one

    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    replay = client.post("/v1/deliveries/replay", json={"since": since, "status": "failed"})
    assert replay.status_code == 202 and replay.json() == {
        "replayed": total - 1,
        "disabled_subscriptions": [],
    }
    assert drive(worker, lambda: len(receiver.delivered()) == total)
    assert len({r.webhook_id for r in receiver.delivered()}) == total
    # Replaying delivered ones sends them again, same ids (receivers deduplicate on them).
    again = client.post(
        "/v1/deliveries/replay", json={"since": since, "subscription_id": sub["id"]}
    )
    assert again.json()["replayed"] == total

    rotated = client.post(f"/v1/subscriptions/{sub['id']}/rotate-secret").json()
    assert rotated["secret"] != sub["secret"] and rotated["previous_secret_expires_at"]
    ping = client.post(f"/v1/subscriptions/{sub['id']}/test")
    assert ping.status_code == 202
    ping_id = ping.json()["id"]
    assert drive(worker, lambda: any(r.webhook_id == ping_id for r in receiver.delivered()))
    got = next(r for r in receiver.delivered() if r.webhook_id == ping_id)
    assert Webhook(rotated["secret"]).verify(got.body, got.headers)["type"] == "webhook.ping"
    Webhook(sub["secret"]).verify(got.body, got.headers)  # old secret still valid (overlap)

    client.post(f"/v1/subscriptions/{sub['id']}/disable")
    _problem(client.post(f"/v1/subscriptions/{sub['id']}/test"), 409)
    _problem(client.post(f"/v1/deliveries/{one}/retry"), 409)
    replay = client.post("/v1/deliveries/replay", json={"since": since}).json()
    assert replay["disabled_subscriptions"] == [sub["id"]]


def test_erasing_a_lead_drops_its_messages(
    client: TestClient, session_factory: sessionmaker[Session], receiver: Receiver
) -> None:
    _create(client, receiver.url, event_types=["*"])
    results = client.post("/v1/events", json={"events": qualified_stream("gone@x.it")}).json()
    lead_id = results["results"][0]["lead_id"]
    with session_factory() as session:
        count = select(func.count()).select_from(OutboxMessage)
        assert (session.scalar(count.where(OutboxMessage.lead_id == lead_id)) or 0) > 0
    assert client.delete(f"/v1/leads/{lead_id}").status_code in (200, 204)
    with session_factory() as session:
        assert session.scalar(count) == 0


def test_time_driven_transitions_reach_subscribers(
    database_url: str, settings: Settings, receiver: Receiver
) -> None:
    """Under the BANT model a handed-over lead that sales does not confirm within 4 working
    hours is reported as lead.sla_breached by the timer loop, and a cold lead as
    lead.requalify_due after 30 days, through the real ingestion path."""
    from leadscore_api.service.timers import tick

    bant = settings.model_copy(update={"primary_ruleset": "bant"})
    upgrade_database(database_url)
    app = create_app(bant)
    with TestClient(app, headers=auth("test-admin-key")) as client:
        sub = _create(client, receiver.url, event_types=["lead.sla_breached", "lead.requalify_due"])
        week_ago = datetime.now(UTC).replace(microsecond=0) - timedelta(days=7)
        events = [
            {
                "id": "h1",
                "type": "demo.requested",
                "occurred_at": week_ago.isoformat(),
                "lead": {"email": "handover@x.it"},
                "attributes": {"purchase_intent": True},
            },
            {
                "id": "h2",
                "type": "page.viewed",
                "occurred_at": (week_ago + timedelta(hours=1)).isoformat(),
                "lead": {"email": "handover@x.it"},
                "properties": {"url": "/pricing"},
            },
            {
                "id": "h3",
                "type": "page.viewed",
                "occurred_at": (week_ago + timedelta(hours=2)).isoformat(),
                "lead": {"email": "handover@x.it"},
                "properties": {"url": "/prezzi"},
            },
            {
                "id": "c1",
                "type": "form.submitted",
                "occurred_at": (week_ago - timedelta(days=40)).isoformat(),
                "lead": {"email": "cold@x.it"},
                "attributes": {"source": "other"},
            },
        ]
        answer = client.post("/v1/events", json={"events": events})
        assert answer.status_code == 200, answer.text
        handover = client.get("/v1/leads", params={"email": "handover@x.it"}).json()["items"][0]
        assert handover["stage"] == "mql"

        fired = tick(app.state.session_factory, datetime.now(UTC))
        assert fired >= 3  # two SLAs of the hand-over, one re-qualification
        assert tick(app.state.session_factory, datetime.now(UTC)) == 0  # each fires once

        worker = make_worker(app.state.session_factory)
        assert drive(worker, lambda: len(receiver.delivered()) >= 3)
        seen = set()
        for request in receiver.delivered():
            payload = Webhook(sub["secret"]).verify(request.body, request.headers)
            seen.add((payload["type"], payload["data"]["lead"]["email"]))
        assert ("lead.sla_breached", "handover@x.it") in seen
        assert ("lead.requalify_due", "cold@x.it") in seen
