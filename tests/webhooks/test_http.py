"""``/v1/webhooks/{source}`` over HTTP: each platform's real request format moves a lead's score,
its retries come back ``duplicate``, and forged requests are refused with nothing stored.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from urllib.parse import urlencode

import httpx2
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.storage.models import Event, WebhookReplayToken

from . import platforms as p
from .conftest import lead, score_of, seed_fit


def post(client: TestClient, source: str, signed: p.SignedRequest) -> httpx2.Response:
    return client.post(
        f"/v1/webhooks/{source}",
        content=signed.body,
        headers=signed.headers,
        params=signed.query,
    )


def event_count(session_factory: sessionmaker[Session]) -> int:
    with session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(Event)) or 0)


def statuses(response: httpx2.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [r["status"] for r in response.json()["results"]]


def assert_problem(response: httpx2.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, detail


# --- SendGrid ---------------------------------------------------------------------------------


def test_sendgrid_batch_scores_dedupes_and_rejects_forgeries(
    client: TestClient,
    webhook_client: TestClient,
    sendgrid_keys: p.SendGridKeys,
    session_factory: sessionmaker[Session],
) -> None:
    email = "anna.rossi@metalpro.it"
    before = seed_fit(client, email)
    now = int(time.time())
    batch = [
        p.sendgrid_event("delivered", email, "sg-1", now - 60),
        p.sendgrid_event("open", email, "sg-2", now - 30),
        p.sendgrid_event("click", email, "sg-3", now - 20),
        p.sendgrid_event("open", "not an email", "sg-4", now - 10),
    ]
    signed = sendgrid_keys.sign(json.dumps(batch).encode())
    response = post(webhook_client, "sendgrid", signed)
    assert statuses(response) == ["accepted", "accepted", "accepted", "rejected"]
    assert "email" in response.json()["results"][3]["error"]
    assert [r["id"] for r in response.json()["results"]][:3] == [
        "sendgrid:sg-1",
        "sendgrid:sg-2",
        "sendgrid:sg-3",
    ]
    after = lead(client, email)
    assert after is not None and after["score"] == before + 5

    stored = event_count(session_factory)
    retry = post(webhook_client, "sendgrid", sendgrid_keys.sign(signed.body))
    assert statuses(retry) == ["duplicate", "duplicate", "duplicate", "rejected"]
    assert event_count(session_factory) == stored
    assert score_of(client, email) == before + 5

    forged = sendgrid_keys.sign(signed.body)
    forged.body = forged.body.replace(b"sg-1", b"sg-9")
    assert_problem(post(webhook_client, "sendgrid", forged), 401, "signature")
    other_key = p.SendGridKeys().sign(
        json.dumps([p.sendgrid_event("open", email, "sg-x")]).encode()
    )
    assert_problem(post(webhook_client, "sendgrid", other_key), 401)
    stale = sendgrid_keys.sign(
        json.dumps([p.sendgrid_event("open", email, "sg-y")]).encode(), now - 3600
    )
    assert_problem(post(webhook_client, "sendgrid", stale), 401, "old")
    unsigned = webhook_client.post("/v1/webhooks/sendgrid", content=b"[]")
    assert_problem(unsigned, 401, "missing")
    assert event_count(session_factory) == stored


def test_sendgrid_malformed_body_is_a_400(
    webhook_client: TestClient, sendgrid_keys: p.SendGridKeys
) -> None:
    response = post(webhook_client, "sendgrid", sendgrid_keys.sign(b'{"event": "open"}'))
    assert_problem(response, 400, "JSON array")
    response = post(webhook_client, "sendgrid", sendgrid_keys.sign(b"[{"))
    assert_problem(response, 400, "not valid JSON")


def test_sendgrid_batch_of_1000_in_one_request(
    client: TestClient, webhook_client: TestClient, sendgrid_keys: p.SendGridKeys
) -> None:
    now = int(time.time())
    batch = [
        p.sendgrid_event(
            "open" if i % 2 else "delivered",
            f"lead{i % 50}@example.it",
            f"bulk-{i}",
            now - 100 + i % 60,
        )
        for i in range(1000)
    ]
    body = json.dumps(batch).encode()
    assert len(body) < 1024 * 1024
    response = post(webhook_client, "sendgrid", sendgrid_keys.sign(body))
    assert statuses(response) == ["accepted"] * 1000
    assert lead(client, "lead7@example.it") is not None


def test_batch_over_the_limit_is_refused(
    webhook_client: TestClient, sendgrid_keys: p.SendGridKeys
) -> None:
    batch = [p.sendgrid_event("open", "a@b.it", f"over-{i}") for i in range(1001)]
    response = post(webhook_client, "sendgrid", sendgrid_keys.sign(json.dumps(batch).encode()))
    assert_problem(response, 400, "at most 1000")


# --- Mailgun ----------------------------------------------------------------------------------


# A bounce or unsubscribe is -10, and a component never goes below 0: after one open (+5) the
# behaviour component falls back to 0, so the score returns to the fit alone.


def test_mailgun_scores_dedupes_and_guards_tokens(
    client: TestClient, webhook_client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    email = "marco@fonderia.it"
    before = seed_fit(client, email)
    body = p.mailgun_body("opened", email, "mg-open-1", token="t" * 50)
    signed = p.SignedRequest(body=body, headers={"Content-Type": "application/json"})
    assert statuses(post(webhook_client, "mailgun", signed)) == ["accepted"]
    assert score_of(client, email) == before + 5
    # Mailgun retries the same delivery: same token, same body → duplicate, not an error.
    assert statuses(post(webhook_client, "mailgun", signed)) == ["duplicate"]
    # The same signature with other event data is a replay.
    data = json.loads(body)
    data["event-data"]["id"] = "mg-forged"
    data["event-data"]["event"] = "complained"
    replay = p.SignedRequest(body=json.dumps(data).encode(), headers=signed.headers)
    stored = event_count(session_factory)
    assert_problem(post(webhook_client, "mailgun", replay), 401, "already used")
    assert event_count(session_factory) == stored
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(WebhookReplayToken)) == 1

    bounce = p.mailgun_body("failed", email, "mg-fail-1")
    response = post(webhook_client, "mailgun", p.SignedRequest(body=bounce, headers={}))
    assert statuses(response) == ["accepted"]
    assert score_of(client, email) == before

    wrong_key = p.mailgun_body("opened", email, "mg-2", key="not-the-key")
    assert_problem(
        post(webhook_client, "mailgun", p.SignedRequest(wrong_key, {})), 401, "does not match"
    )
    old = p.mailgun_body("opened", email, "mg-3", timestamp=int(time.time()) - 900)
    assert_problem(post(webhook_client, "mailgun", p.SignedRequest(old, {})), 401, "old")
    assert_problem(post(webhook_client, "mailgun", p.SignedRequest(b"{nope", {})), 400, "JSON")


# --- Mailchimp --------------------------------------------------------------------------------


def test_mailchimp_validator_get_and_subscribe(
    client: TestClient, webhook_client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    assert (
        webhook_client.get("/v1/webhooks/mailchimp", params={"token": p.TOKEN}).status_code == 200
    )
    email = "giulia@tessile.it"
    before = seed_fit(client, email)
    fired_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    body = p.mailchimp_form("subscribe", email, fired_at=fired_at, AZIENDA="Tessile Srl")
    signed = p.SignedRequest(
        body=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        query={"token": p.TOKEN},
    )
    assert statuses(post(webhook_client, "mailchimp", signed)) == ["accepted"]
    found = lead(client, email)
    assert found is not None and found["score"] == before + 10
    assert found["attributes"]["company"] == "Tessile Srl"
    assert found["attributes"]["first_name"] == "Anna"
    assert statuses(post(webhook_client, "mailchimp", signed)) == ["duplicate"]

    stored = event_count(session_factory)
    wrong = p.SignedRequest(body=body, headers=signed.headers, query={"token": "guess"})
    assert_problem(post(webhook_client, "mailchimp", wrong), 401, "wrong token")
    missing = p.SignedRequest(body=body, headers=signed.headers)
    assert_problem(post(webhook_client, "mailchimp", missing), 401, "missing token")
    by_header = p.SignedRequest(body=body, headers={**signed.headers, "X-Leadscore-Token": p.TOKEN})
    assert statuses(post(webhook_client, "mailchimp", by_header)) == ["duplicate"]
    assert event_count(session_factory) == stored

    campaign = urlencode(
        {"type": "campaign", "fired_at": fired_at, "data[id]": "5aa2102003"}
    ).encode()
    ignored = post(
        webhook_client, "mailchimp", p.SignedRequest(campaign, signed.headers, {"token": p.TOKEN})
    )
    assert statuses(ignored) == ["ignored"]
    garbage = p.SignedRequest(b"hello", signed.headers, {"token": p.TOKEN})
    assert_problem(post(webhook_client, "mailchimp", garbage), 400)


# --- Mandrill ---------------------------------------------------------------------------------


def test_mandrill_head_check_and_signed_events(
    client: TestClient, webhook_client: TestClient
) -> None:
    assert webhook_client.head("/v1/webhooks/mandrill").status_code == 200
    email = "luca@meccanica.it"
    before = seed_fit(client, email)
    now = int(time.time())
    events = [
        p.mandrill_event("send", email, now - 60),
        p.mandrill_event("open", email, now - 30),
        p.mandrill_event("click", email, now - 20),
        {"type": "blacklist", "action": "add", "reject": {"email": email}},
    ]
    signed = p.mandrill_request(events)
    assert statuses(post(webhook_client, "mandrill", signed)) == [
        "accepted",
        "accepted",
        "accepted",
        "ignored",
    ]
    assert score_of(client, email) == before + 5
    assert statuses(post(webhook_client, "mandrill", signed)) == [
        "duplicate",
        "duplicate",
        "duplicate",
        "ignored",
    ]

    forged = p.mandrill_request(events, key="guessed-key")
    assert_problem(post(webhook_client, "mandrill", forged), 401, "X-Mandrill-Signature")
    other_url = p.mandrill_request(events, url="https://evil.example/v1/webhooks/mandrill")
    assert_problem(post(webhook_client, "mandrill", other_url), 401)
    bad = p.mandrill_request([])
    bad.body = b"mandrill_events=%5B%7B"
    bad.headers["X-Mandrill-Signature"] = p.mandrill_request([]).headers["X-Mandrill-Signature"]
    assert_problem(post(webhook_client, "mandrill", bad), 401)


def test_mandrill_malformed_but_signed_is_a_400(webhook_client: TestClient) -> None:
    # Sign a body whose mandrill_events is not JSON: authentic, but unreadable.
    import base64
    import hashlib
    import hmac

    value = "[{"
    signature = base64.b64encode(
        hmac.new(
            p.MANDRILL_KEY.encode(),
            (p.MANDRILL_URL + "mandrill_events" + value).encode(),
            hashlib.sha1,
        ).digest()
    ).decode()
    signed = p.SignedRequest(
        body=urlencode({"mandrill_events": value}).encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Mandrill-Signature": signature,
        },
    )
    assert_problem(post(webhook_client, "mandrill", signed), 400, "mandrill_events")


# --- Postmark and Brevo (basic auth) ----------------------------------------------------------


def test_postmark_open_bounce_and_auth(client: TestClient, webhook_client: TestClient) -> None:
    email = "john@example.com"
    before = seed_fit(client, email)
    opened = {**p.POSTMARK_OPEN, "ReceivedAt": datetime.now(UTC).isoformat()}
    signed = p.SignedRequest(
        json.dumps(opened).encode(), {"Content-Type": "application/json", **p.basic_auth()}
    )
    assert statuses(post(webhook_client, "postmark", signed)) == ["accepted"]
    assert score_of(client, email) == before + 5
    assert statuses(post(webhook_client, "postmark", signed)) == ["duplicate"]
    bounce = {**p.POSTMARK_BOUNCE, "BouncedAt": datetime.now(UTC).isoformat()}
    response = post(
        webhook_client, "postmark", p.SignedRequest(json.dumps(bounce).encode(), signed.headers)
    )
    assert statuses(response) == ["accepted"]
    assert score_of(client, email) == before

    wrong = p.SignedRequest(
        signed.body, {"Content-Type": "application/json", **p.basic_auth("leadscore:nope")}
    )
    response = post(webhook_client, "postmark", wrong)
    assert_problem(response, 401, "wrong user name or password")
    assert response.headers["www-authenticate"].startswith("Basic")
    assert_problem(post(webhook_client, "postmark", p.SignedRequest(signed.body, {})), 401)
    no_type = p.SignedRequest(b'{"MessageID": "x"}', signed.headers)
    assert_problem(post(webhook_client, "postmark", no_type), 400, "RecordType")


def test_brevo_click_unsubscribe_and_auth(client: TestClient, webhook_client: TestClient) -> None:
    email = "sara@logistica.it"
    before = seed_fit(client, email)
    now = int(time.time())
    headers = {"Content-Type": "application/json", **p.basic_auth()}
    opened = p.SignedRequest(json.dumps(p.brevo_event("opened", email, now - 30)).encode(), headers)
    assert statuses(post(webhook_client, "brevo", opened)) == ["accepted"]
    assert score_of(client, email) == before + 5
    assert statuses(post(webhook_client, "brevo", opened)) == ["duplicate"]
    unsub = p.SignedRequest(
        json.dumps(p.brevo_event("unsubscribed", email, now - 10)).encode(), headers
    )
    assert statuses(post(webhook_client, "brevo", unsub)) == ["accepted"]
    assert score_of(client, email) == before
    forged = p.SignedRequest(
        opened.body, {"Content-Type": "application/json", **p.basic_auth("x:y")}
    )
    assert_problem(post(webhook_client, "brevo", forged), 401)
    assert_problem(post(webhook_client, "brevo", p.SignedRequest(b"[", headers)), 400)


# --- Typeform and the website form ------------------------------------------------------------


def test_typeform_response_sets_fit(client: TestClient, webhook_client: TestClient) -> None:
    email = "anna@metalpro.it"
    signed = p.typeform_request(p.typeform_body(email))
    assert statuses(post(webhook_client, "typeform", signed)) == ["accepted"]
    found = lead(client, email)
    assert found is not None
    assert found["attributes"]["role"] == "Responsabile acquisti"
    assert found["attributes"]["employees"] == 250
    assert found["attributes"]["annual_revenue_eur"] == 5_000_000
    assert found["letter"] == "A" and found["score"] == 50
    assert statuses(post(webhook_client, "typeform", signed)) == ["duplicate"]
    tampered = p.typeform_request(p.typeform_body(email))
    tampered.body = tampered.body.replace(b"5.000.000", b"9.000.000")
    assert_problem(post(webhook_client, "typeform", tampered), 401, "Typeform-Signature")
    assert_problem(
        post(webhook_client, "typeform", p.typeform_request(b'{"event_id": "x"}')),
        400,
        "form_response",
    )


def test_italian_website_form(client: TestClient, webhook_client: TestClient) -> None:
    body = urlencode(
        {
            "email": "paolo.bianchi@acciaierie.it",
            "nome": "Paolo",
            "ruolo": "Direttore acquisti",
            "dipendenti": "1.200",
            "fatturato": "5.000.000",
            "settore": "manifatturiero",
        }
    ).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    response = webhook_client.post(
        "/v1/webhooks/form", content=body, headers=headers, params={"token": p.TOKEN}
    )
    assert statuses(response) == ["accepted"]
    found = lead(client, "paolo.bianchi@acciaierie.it")
    assert found is not None
    assert found["attributes"]["employees"] == 1200
    assert found["attributes"]["annual_revenue_eur"] == 5_000_000
    assert found["attributes"]["role"] == "Direttore acquisti"
    assert found["score"] == 50 and found["letter"] == "A"
    again = webhook_client.post(
        "/v1/webhooks/form", content=body, headers=headers, params={"token": p.TOKEN}
    )
    assert statuses(again) == ["duplicate"]
    download = webhook_client.post(
        "/v1/webhooks/form",
        json={"email": "paolo.bianchi@acciaierie.it", "submission_id": "wp-1"},
        headers={"X-Leadscore-Token": p.TOKEN},
        params={"event": "content.downloaded"},
    )
    assert statuses(download) == ["accepted"]
    assert score_of(client, "paolo.bianchi@acciaierie.it") == 60
    wrong = webhook_client.post(
        "/v1/webhooks/form", content=body, headers=headers, params={"token": "x"}
    )
    assert_problem(wrong, 401, "wrong token")
    no_email = webhook_client.post(
        "/v1/webhooks/form", json={"nome": "Paolo"}, params={"token": p.TOKEN}
    )
    assert statuses(no_email) == ["rejected"]
    assert "email" in no_email.json()["results"][0]["error"]


# --- routing and configuration ----------------------------------------------------------------


def test_unknown_and_unconfigured_sources(webhook_client: TestClient, app: FastAPI) -> None:
    assert_problem(webhook_client.post("/v1/webhooks/hubspot", content=b"{}"), 404, "sendgrid")
    assert_problem(webhook_client.get("/v1/webhooks/hubspot"), 404)
    app.state.settings = app.state.settings.model_copy(update={"webhook_brevo_secret": None})
    response = webhook_client.post("/v1/webhooks/brevo", content=b"{}", headers=p.basic_auth())
    assert_problem(response, 403, "LEADSCORE_WEBHOOK_BREVO_SECRET")
    # The URL checks still answer, so a platform accepts the URL before the secret is set.
    assert webhook_client.head("/v1/webhooks/brevo").status_code == 200
    app.state.settings = app.state.settings.model_copy(
        update={"webhook_sendgrid_secret": "bm90IGEga2V5"}
    )
    response = webhook_client.post("/v1/webhooks/sendgrid", content=b"[]")
    assert_problem(response, 403, "LEADSCORE_WEBHOOK_SENDGRID_SECRET")


def test_webhooks_need_no_api_key_and_ignore_one(webhook_client: TestClient) -> None:
    body = json.dumps({"email": "x@y.it", "submission_id": "k1"}).encode()
    response = webhook_client.post(
        "/v1/webhooks/form",
        content=body,
        headers={"Content-Type": "application/json", "Authorization": "Bearer not-a-key"},
        params={"token": p.TOKEN},
    )
    assert statuses(response) == ["accepted"]


def test_too_large_body_is_413(webhook_client: TestClient, sendgrid_keys: p.SendGridKeys) -> None:
    body = b"[" + b" " * (1024 * 1024 + 10) + b"]"
    response = post(webhook_client, "sendgrid", sendgrid_keys.sign(body))
    assert response.status_code == 413
