"""The platform adapters on their own: documented payloads in, canonical events out.

No HTTP and no database here: each adapter is a pure function of the request, so its mapping,
its signature check and its handling of bad input are pinned down directly.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pytest

from leadscore_api.config import Settings, SettingsError, load_settings
from leadscore_api.errors import SourceNotConfigured
from leadscore_api.ingest.events import CanonicalEvent
from leadscore_api.ingest.signatures import (
    PayloadError,
    SignatureError,
    hmac_digest,
)
from leadscore_api.ingest.sources import (
    ADAPTERS,
    AdapterError,
    Ignored,
    Item,
    SourceConfig,
    WebhookRequest,
    brevo,
    form,
    mailchimp,
    mailgun,
    mandrill,
    postmark,
    sendgrid,
    typeform,
)
from leadscore_api.service.webhooks import source_config

from . import platforms as p

#: A fixed receive time for parsing (the form adapter uses it as the event time).
NOW = datetime.now(UTC)


def now() -> datetime:
    """The current time, for checks against timestamps signed "now" in the same test."""
    return datetime.now(UTC)


def request(
    signed: p.SignedRequest | None = None,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    url: str = "http://testserver/v1/webhooks/x",
) -> WebhookRequest:
    if signed is not None:
        body, headers, query = signed.body, signed.headers, signed.query
    return WebhookRequest(
        method="POST",
        url=url,
        headers=headers or {},
        query=query or {},
        body=body,
        received_at=now(),
    )


def events(items: list[Item]) -> list[CanonicalEvent]:
    assert all(isinstance(i, CanonicalEvent) for i in items), items
    return [i for i in items if isinstance(i, CanonicalEvent)]


# --- SendGrid ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sg_keys() -> p.SendGridKeys:
    return p.SendGridKeys()


def test_sendgrid_maps_each_event_type(sg_keys: p.SendGridKeys) -> None:
    batch = [
        p.sendgrid_event("processed", "anna@metalpro.it", "e1"),
        p.sendgrid_event("delivered", "anna@metalpro.it", "e2"),
        p.sendgrid_event("open", "anna@metalpro.it", "e3", sg_machine_open=False),
        p.sendgrid_event("click", "anna@metalpro.it", "e4", category=["promo", "novembre"]),
        p.sendgrid_event("bounce", "anna@metalpro.it", "e5"),
        p.sendgrid_event("bounce", "anna@metalpro.it", "e6", type="blocked"),
        p.sendgrid_event("spamreport", "anna@metalpro.it", "e7"),
        p.sendgrid_event("unsubscribe", "anna@metalpro.it", "e8"),
        p.sendgrid_event("group_unsubscribe", "anna@metalpro.it", "e9", asm_group_id=10),
        p.sendgrid_event("mystery", "anna@metalpro.it", "e10"),
    ]
    out = events(sendgrid.parse(json.dumps(batch).encode()))
    assert [e.type for e in out] == [
        "email.processed",
        "email.delivered",
        "email.opened",
        "email.clicked",
        "email.bounced",
        "email.blocked",
        "email.spam_reported",
        "email.unsubscribed",
        "email.unsubscribed",
        "sendgrid.mystery",
    ]
    click = out[3]
    assert click.id == "sendgrid:e4"
    assert click.lead.email == "anna@metalpro.it"
    assert click.properties["url"] == "https://www.example.it/pricing"
    assert click.properties["category"] == ["promo", "novembre"]
    assert click.properties["message_id"].startswith("14c5d75ce93")
    assert click.raw == batch[3]
    assert out[0].properties["category"] == ["cat facts"]
    assert out[2].properties["machine_open"] is False
    assert out[0].source == "sendgrid"


def test_sendgrid_signature_checks(sg_keys: p.SendGridKeys) -> None:
    body = json.dumps([p.sendgrid_event("open", "a@b.it", "x1")]).encode()
    signed = sg_keys.sign(body)
    sendgrid.verify(signed.headers, body, sg_keys.public_b64, now(), 300)
    with pytest.raises(SignatureError, match="does not match"):
        sendgrid.verify(signed.headers, body + b" ", sg_keys.public_b64, now(), 300)
    with pytest.raises(SignatureError, match="does not match"):
        sendgrid.verify(signed.headers, body, p.SendGridKeys().public_b64, now(), 300)
    with pytest.raises(SignatureError, match="missing"):
        sendgrid.verify({"Content-Type": "application/json"}, body, sg_keys.public_b64, now(), 300)
    old = sg_keys.sign(body, timestamp=int(time.time()) - 301)
    with pytest.raises(SignatureError, match="old"):
        sendgrid.verify(old.headers, body, sg_keys.public_b64, now(), 300)
    future = sg_keys.sign(body, timestamp=int(time.time()) + 3600)
    with pytest.raises(SignatureError, match="future"):
        sendgrid.verify(future.headers, body, sg_keys.public_b64, now(), 300)
    tampered_ts = dict(signed.headers)
    # One second off the signed timestamp (not off the clock, which may have moved on by one).
    signed_ts = int(signed.headers["X-Twilio-Email-Event-Webhook-Timestamp"])
    tampered_ts["X-Twilio-Email-Event-Webhook-Timestamp"] = str(signed_ts - 1)
    with pytest.raises(SignatureError):
        sendgrid.verify(tampered_ts, body, sg_keys.public_b64, now(), 300)
    garbage = dict(signed.headers)
    garbage["X-Twilio-Email-Event-Webhook-Signature"] = "not base64!!"
    with pytest.raises(SignatureError, match="base64"):
        sendgrid.verify(garbage, body, sg_keys.public_b64, now(), 300)


def test_sendgrid_key_in_pem_is_accepted_and_a_bad_key_is_a_configuration_problem(
    sg_keys: p.SendGridKeys,
) -> None:
    pem = "-----BEGIN PUBLIC KEY-----\n" + sg_keys.public_b64 + "\n-----END PUBLIC KEY-----\n"
    body = b"[]"
    sendgrid.verify(sg_keys.sign(body).headers, body, pem, now(), 300)
    with pytest.raises(SourceNotConfigured, match="SENDGRID_SECRET"):
        sendgrid.verify(sg_keys.sign(body).headers, body, "bm90IGEga2V5", now(), 300)


def test_sendgrid_bad_events_do_not_lose_the_others() -> None:
    batch = [
        p.sendgrid_event("open", "anna@metalpro.it", "ok1"),
        "not an object",
        p.sendgrid_event("open", "not-an-email", "bad-email"),
        {**p.sendgrid_event("open", "anna@metalpro.it", "bad-time"), "timestamp": "yesterday"},
        {"email": "anna@metalpro.it", "timestamp": 1},
        p.sendgrid_event("open", "anna@metalpro.it", "ok2"),
    ]
    out = sendgrid.parse(json.dumps(batch).encode())
    assert [type(i).__name__ for i in out] == [
        "CanonicalEvent",
        "AdapterError",
        "AdapterError",
        "AdapterError",
        "AdapterError",
        "CanonicalEvent",
    ]
    errors = [i for i in out if isinstance(i, AdapterError)]
    assert [e.index for e in errors] == [1, 2, 3, 4]
    assert "not a JSON object" in errors[0].error
    assert errors[1].id == "sendgrid:bad-email" and "email" in errors[1].error
    assert "timestamp" in errors[2].error
    assert "'event'" in errors[3].error


def test_sendgrid_event_without_sg_event_id_gets_a_stable_derived_id() -> None:
    event = p.sendgrid_event("open", "a@b.it", "")
    del event["sg_event_id"]
    first = events(sendgrid.parse(json.dumps([event]).encode()))[0]
    again = events(sendgrid.parse(json.dumps([event], indent=2).encode()))[0]
    assert first.id == again.id and first.id.startswith("sendgrid:")


@pytest.mark.parametrize("body", [b"", b"{not json", b'{"event": "open"}', b"\xff\xfe"])
def test_sendgrid_unreadable_bodies(body: bytes) -> None:
    with pytest.raises(PayloadError):
        sendgrid.parse(body)


# --- Mailgun ----------------------------------------------------------------------------------


def test_mailgun_verifies_and_returns_the_token() -> None:
    body = p.mailgun_body("opened", "anna@metalpro.it", "id-1", token="tok-1")
    payload = json.loads(body)
    assert mailgun.verify(payload, p.MAILGUN_KEY, now(), 300) == "tok-1"
    with pytest.raises(SignatureError, match="does not match"):
        mailgun.verify(payload, "another-key", now(), 300)
    old = json.loads(p.mailgun_body("opened", "a@b.it", "id-2", timestamp=int(time.time()) - 600))
    with pytest.raises(SignatureError, match="old"):
        mailgun.verify(old, p.MAILGUN_KEY, now(), 300)
    with pytest.raises(SignatureError, match="'signature'"):
        mailgun.verify({"event-data": {}}, p.MAILGUN_KEY, now(), 300)


def test_mailgun_subaccount_parent_signature_is_accepted() -> None:
    payload = json.loads(p.mailgun_body("opened", "a@b.it", "id-3", key="subaccount-key"))
    sig = payload["signature"]
    sig["parent-signature"] = hmac_digest(
        p.MAILGUN_KEY, f"{sig['timestamp']}{sig['token']}".encode(), "sha256"
    ).hex()
    assert mailgun.verify(payload, p.MAILGUN_KEY, now(), 300) == sig["token"]


def test_mailgun_maps_events() -> None:
    def one(event: str, **extra: Any) -> CanonicalEvent:
        return events(mailgun.parse(p.mailgun_body(event, "anna@metalpro.it", "id", **extra)))[0]

    assert one("delivered").type == "email.delivered"
    opened = one("opened")
    assert opened.type == "email.opened" and opened.id == "mailgun:id"
    assert opened.properties["message_id"] == "20260203192638.000be97f99f8cea1@sample.mailgun.com"
    assert opened.properties["category"] == ["newsletter", "novembre"]
    clicked = one("clicked")
    assert clicked.type == "email.clicked"
    assert clicked.properties["url"] == "https://www.example.it/pricing"
    assert one("failed").type == "email.bounced"
    assert one("failed", severity="temporary").type == "email.deferred"
    assert one("unsubscribed").type == "email.unsubscribed"
    assert one("complained").type == "email.spam_reported"
    assert one("accepted").type == "email.accepted"
    assert opened.occurred_at.tzinfo is not None


def test_mailgun_malformed() -> None:
    with pytest.raises(PayloadError):
        mailgun.parse(b"[]")
    with pytest.raises(PayloadError, match="event-data"):
        mailgun.parse(b'{"signature": {}}')
    bad = json.loads(p.mailgun_body("opened", "anna@metalpro.it", "id"))
    del bad["event-data"]["recipient"]
    out = mailgun.parse(json.dumps(bad).encode())
    assert isinstance(out[0], AdapterError) and "recipient" in out[0].error


# --- Mailchimp --------------------------------------------------------------------------------


def test_mailchimp_subscribe_with_merge_fields() -> None:
    body = p.mailchimp_form(
        "subscribe", "Anna.Rossi@MetalPro.it", COMPANY="MetalPro", RUOLO="CEO", DIPENDENTI="1.200"
    )
    out = events(mailchimp.parse(body, {}))
    event = out[0]
    assert event.type == "newsletter.subscribed"
    assert event.lead.email == "anna.rossi@metalpro.it"
    assert event.occurred_at == datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    assert event.attributes == {
        "first_name": "Anna",
        "last_name": "Rossi",
        "company": "MetalPro",
        "role": "CEO",
        "employees": 1200,
        "interests": ["Group1", "Group2"],  # Mailchimp's interest groups
    }
    assert event.properties["list_id"] == "a6b5da1054"
    assert event.raw["data"]["merges"]["FNAME"] == "Anna"
    assert event.id.startswith("mailchimp:")
    assert events(mailchimp.parse(body, {}))[0].id == event.id
    later = p.mailchimp_form("subscribe", "anna.rossi@metalpro.it", fired_at="2026-11-21 10:00:00")
    assert events(mailchimp.parse(later, {}))[0].id != event.id


def test_mailchimp_other_types() -> None:
    unsub = events(mailchimp.parse(p.mailchimp_form("unsubscribe", "a@b.it"), {}))[0]
    assert unsub.type == "email.unsubscribed"
    assert unsub.properties["campaign"] == "cb398d21d2"
    assert (
        events(mailchimp.parse(p.mailchimp_form("cleaned", "a@b.it"), {}))[0].type
        == "email.bounced"
    )
    abuse = p.mailchimp_form("cleaned", "a@b.it").replace(b"reason%5D=hard", b"reason%5D=abuse")
    assert events(mailchimp.parse(abuse, {}))[0].type == "email.spam_reported"
    profile = events(mailchimp.parse(p.mailchimp_form("profile", "a@b.it"), {}))[0]
    assert profile.type == "newsletter.profile_updated"
    upemail = urlencode(
        {
            "type": "upemail",
            "fired_at": "2026-11-20 10:00:00",
            "data[list_id]": "a6b5da1054",
            "data[new_id]": "51da8c3259",
            "data[new_email]": "new@b.it",
            "data[old_email]": "old@b.it",
        }
    ).encode()
    changed = events(mailchimp.parse(upemail, {}))[0]
    assert changed.lead.email == "old@b.it" and changed.properties["new_email"] == "new@b.it"
    campaign = urlencode(
        {
            "type": "campaign",
            "fired_at": "2026-11-20 10:00:00",
            "data[id]": "5aa2102003",
            "data[subject]": "Test Campaign Subject",
            "data[status]": "sent",
            "data[list_id]": "a6b5da1054",
        }
    ).encode()
    assert isinstance(mailchimp.parse(campaign, {})[0], Ignored)


def test_mailchimp_malformed() -> None:
    with pytest.raises(PayloadError, match="type"):
        mailchimp.parse(b"data%5Bemail%5D=a%40b.it", {})
    with pytest.raises(PayloadError):
        mailchimp.parse(b"type=subscribe", {})
    out = mailchimp.parse(b"type=subscribe&fired_at=ieri&data%5Bemail%5D=a%40b.it", {})
    assert isinstance(out[0], AdapterError) and "fired_at" in out[0].error


def test_token_check() -> None:
    adapter = ADAPTERS["mailchimp"]
    config = SourceConfig(secret=p.TOKEN)
    adapter.verify(request(query={"token": p.TOKEN}), config)
    adapter.verify(request(headers={"X-Leadscore-Token": p.TOKEN}), config)
    with pytest.raises(SignatureError, match="wrong token"):
        adapter.verify(request(query={"token": "nope"}), config)
    with pytest.raises(SignatureError, match="missing token"):
        adapter.verify(request(), config)


# --- Mandrill ---------------------------------------------------------------------------------


def test_mandrill_signature_over_registered_url() -> None:
    ts = int(time.time())
    signed = p.mandrill_request([p.mandrill_event("open", "a@b.it", ts)])
    config = SourceConfig(secret=p.MANDRILL_KEY, signed_url=p.MANDRILL_URL)
    ADAPTERS["mandrill"].verify(request(signed), config)
    with pytest.raises(SignatureError, match="MANDRILL_URL"):
        ADAPTERS["mandrill"].verify(request(signed), SourceConfig(secret=p.MANDRILL_KEY))
    with pytest.raises(SignatureError):
        ADAPTERS["mandrill"].verify(
            request(signed), SourceConfig(secret="other", signed_url=p.MANDRILL_URL)
        )
    # Without a configured URL, the URL the request arrived at is the one signed.
    ADAPTERS["mandrill"].verify(
        request(signed, url=p.MANDRILL_URL), SourceConfig(secret=p.MANDRILL_KEY)
    )


def test_mandrill_maps_events_and_ids() -> None:
    ts = 1_795_000_000
    batch = [
        p.mandrill_event("send", "a@b.it", ts),
        p.mandrill_event("open", "a@b.it", ts + 1),
        p.mandrill_event("click", "a@b.it", ts + 2),
        p.mandrill_event("hard_bounce", "a@b.it", ts + 3),
        p.mandrill_event("soft_bounce", "a@b.it", ts + 3),
        p.mandrill_event("spam", "a@b.it", ts + 4),
        p.mandrill_event("unsub", "a@b.it", ts + 5),
        {"type": "blacklist", "action": "add", "reject": {"email": "x@b.it"}},
    ]
    out = mandrill.parse([("mandrill_events", json.dumps(batch))])
    assert isinstance(out[-1], Ignored)
    found = events(out[:-1])
    assert [e.type for e in found] == [
        "email.sent",
        "email.opened",
        "email.clicked",
        "email.bounced",
        "email.soft_bounced",
        "email.spam_reported",
        "email.unsubscribed",
    ]
    assert found[2].properties["url"] == "https://www.example.it/pricing"
    assert found[1].properties["message_id"] == "exampleaaaaaaaaaaaaaaaaaaaaaaaaa"
    assert found[1].properties["category"] == ["webhook-example"]
    assert len({e.id for e in found}) == len(found)
    again = events(mandrill.parse([("mandrill_events", json.dumps(batch[:2]))]))
    assert [e.id for e in again] == [e.id for e in found[:2]]


def test_mandrill_malformed() -> None:
    with pytest.raises(PayloadError, match="mandrill_events"):
        mandrill.parse([("other", "x")])
    with pytest.raises(PayloadError, match="JSON"):
        mandrill.parse([("mandrill_events", "[{")])
    with pytest.raises(PayloadError, match="array"):
        mandrill.parse([("mandrill_events", "{}")])
    assert mandrill.parse([("mandrill_events", "[]")]) == []


# --- Postmark ---------------------------------------------------------------------------------


def test_postmark_records() -> None:
    def one(record: dict[str, object]) -> CanonicalEvent:
        return events(postmark.parse(json.dumps(record).encode(), NOW))[0]

    opened = one(p.POSTMARK_OPEN)
    assert opened.type == "email.opened" and opened.lead.email == "john@example.com"
    assert opened.properties["message_id"] == "883953f4-6105-42a2-a16a-77a8eac79483"
    assert opened.properties["first_open"] is True
    assert opened.properties["category"] == ["welcome-email"]
    clicked = one(p.POSTMARK_CLICK)
    assert (
        clicked.type == "email.clicked"
        and clicked.properties["url"] == "https://www.example.it/pricing"
    )
    bounce = one(p.POSTMARK_BOUNCE)
    assert bounce.type == "email.bounced" and bounce.id == "postmark:bounce:4323372036854775807"
    assert bounce.occurred_at == datetime(2026, 11, 20, 17, 28, 10, 273539, tzinfo=UTC)
    soft = one({**p.POSTMARK_BOUNCE, "Type": "SoftBounce", "TypeCode": 4096, "Inactive": False})
    assert soft.type == "email.soft_bounced"
    spam = one({**p.POSTMARK_BOUNCE, "RecordType": "SpamComplaint", "Type": "SpamComplaint"})
    assert spam.type == "email.spam_reported"
    assert one(p.POSTMARK_SUBSCRIPTION_CHANGE).type == "email.unsubscribed"
    suppressed = one({**p.POSTMARK_SUBSCRIPTION_CHANGE, "SuppressionReason": "HardBounce"})
    assert suppressed.type == "email.suppressed"
    delivery = one(
        {
            "RecordType": "Delivery",
            "ServerID": 23,
            "MessageStream": "outbound",
            "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
            "Recipient": "john@example.com",
            "Tag": "welcome-email",
            "DeliveredAt": "2026-11-20T13:28:10.2735393-04:00",
            "Details": "Test delivery webhook details",
        }
    )
    assert delivery.type == "email.delivered"
    assert one(p.POSTMARK_OPEN).id == opened.id
    assert one({**p.POSTMARK_OPEN, "ReceivedAt": "2026-11-21T10:00:00Z"}).id != opened.id


def test_basic_auth() -> None:
    adapter = ADAPTERS["postmark"]
    config = SourceConfig(secret=p.BASIC_SECRET)
    adapter.verify(request(headers=p.basic_auth()), config)
    for headers, message in [
        ({}, "missing"),
        (p.basic_auth("leadscore:wrong"), "wrong"),
        ({"Authorization": "Bearer x"}, "basic"),
        ({"Authorization": "Basic ###"}, "base64"),
    ]:
        with pytest.raises(SignatureError, match=message):
            adapter.verify(request(headers=headers), config)


def test_postmark_malformed() -> None:
    with pytest.raises(PayloadError, match="RecordType"):
        postmark.parse(b'{"MessageID": "x"}', NOW)
    with pytest.raises(PayloadError):
        postmark.parse(b'"text"', NOW)
    out = postmark.parse(json.dumps({**p.POSTMARK_OPEN, "ReceivedAt": "yesterday"}).encode(), NOW)
    assert isinstance(out[0], AdapterError) and "ReceivedAt" in out[0].error


# --- Brevo ------------------------------------------------------------------------------------


def test_brevo_events() -> None:
    ts = 1_795_000_000

    def one(event: str, at: int = ts, **extra: object) -> CanonicalEvent:
        body = json.dumps(p.brevo_event(event, "a@b.it", at, **extra)).encode()
        return events(brevo.parse(body))[0]

    assert one("delivered").type == "email.delivered"
    opened = one("opened")
    assert opened.type == "email.opened" and opened.occurred_at == datetime.fromtimestamp(ts, UTC)
    assert opened.properties["message_id"] == "<202611201100.12345678901@smtp-relay.mailin.fr>"
    assert opened.properties["category"] == ["promo-novembre"]
    assert one("unique_opened").properties["first_open"] is True
    assert one("proxy_open").properties["machine_open"] is True
    click = one("click")
    assert (
        click.type == "email.clicked"
        and click.properties["url"] == "https://www.example.it/pricing"
    )
    assert one("hard_bounce").type == "email.bounced"
    assert one("soft_bounce").type == "email.soft_bounced"
    assert one("spam").type == "email.spam_reported"
    assert one("unsubscribed").type == "email.unsubscribed"
    assert one("hardBounce").type == "email.bounced"  # marketing webhooks' spelling
    assert one("opened").id == opened.id
    assert one("opened", at=ts + 1).id != opened.id


def test_brevo_malformed() -> None:
    with pytest.raises(PayloadError, match="event"):
        brevo.parse(b'{"email": "a@b.it"}')
    with pytest.raises(PayloadError):
        brevo.parse(b"42")
    out = brevo.parse(json.dumps({"event": "opened", "email": "a@b.it"}).encode())
    assert isinstance(out[0], AdapterError) and "ts" in out[0].error


# --- Typeform ---------------------------------------------------------------------------------


def test_typeform_signature() -> None:
    body = p.typeform_body("anna@metalpro.it")
    signed = p.typeform_request(body)
    typeform.verify(signed.headers, body, p.TYPEFORM_SECRET)
    with pytest.raises(SignatureError, match="does not match"):
        typeform.verify(signed.headers, body, "other-secret")
    with pytest.raises(SignatureError, match="does not match"):
        typeform.verify(signed.headers, body.replace(b"Anna", b"Anne"), p.TYPEFORM_SECRET)
    with pytest.raises(SignatureError, match="missing"):
        typeform.verify({}, body, p.TYPEFORM_SECRET)
    digest = signed.headers["Typeform-Signature"].removeprefix("sha256=")
    hex_instead = {"Typeform-Signature": "sha256=" + base64.b64decode(digest).hex()}
    with pytest.raises(SignatureError):
        typeform.verify(hex_instead, body, p.TYPEFORM_SECRET)


def test_typeform_answers_become_attributes() -> None:
    field_map = {"job": "role", "Fatturato annuo": "annual_revenue_eur"}
    event = events(typeform.parse(p.typeform_body("Anna@MetalPro.it"), field_map, NOW))[0]
    assert event.type == "form.submitted"
    assert event.id == "typeform:a3a12ec67a1365927098a606107fac15"
    assert event.lead.email == "anna@metalpro.it"
    assert event.attributes == {
        "first_name": "Anna",
        "role": "Responsabile acquisti",
        "employees": 250,
        "annual_revenue_eur": 5_000_000,
        "industry": "manifatturiero",
        "source": "webinar",
    }
    assert event.properties["form_id"] == "lT4Z3j"
    assert event.properties["score"] == 9
    assert event.occurred_at == datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def test_typeform_malformed() -> None:
    with pytest.raises(PayloadError, match="form_response"):
        typeform.parse(b'{"event_id": "x"}', {}, NOW)
    body = json.loads(p.typeform_body("a@b.it"))
    body["form_response"]["answers"] = []
    out = typeform.parse(json.dumps(body).encode(), {}, NOW)
    assert isinstance(out[0], AdapterError) and "email" in out[0].error


# --- generic form -----------------------------------------------------------------------------


def test_italian_form_url_encoded() -> None:
    body = urlencode(
        [
            ("email", "anna.rossi@metalpro.it"),
            ("nome", "Anna"),
            ("ruolo", "Responsabile acquisti"),
            ("dipendenti", "1.200"),
            ("fatturato", "500K-1M"),
            ("settore", "Manifatturiero"),
            ("interessi[]", "automazione"),
            ("interessi[]", "CRM"),
            ("messaggio", "Vorrei una demo"),
        ]
    ).encode()
    out = events(form.parse(body, "application/x-www-form-urlencoded", {}, NOW))
    event = out[0]
    assert event.type == "form.submitted"
    assert event.occurred_at == NOW
    assert event.attributes == {
        "first_name": "Anna",
        "role": "Responsabile acquisti",
        "employees": 1200,
        "annual_revenue_eur": 750_000,
        "industry": "Manifatturiero",
        "interests": ["automazione", "CRM"],
    }
    assert event.properties["fields"] == {"messaggio": "Vorrei una demo"}
    assert events(form.parse(body, "application/x-www-form-urlencoded", {}, NOW))[0].id == event.id


def test_form_json_with_configured_map_and_explicit_id() -> None:
    body = json.dumps(
        {
            "submission_id": "sub-42",
            "E-mail aziendale": "b@c.it",
            "Numero addetti": "5.000",
            "Giro d'affari": "oltre 1 milione",
            "submitted_at": "2026-11-20T10:00:00+01:00",
        }
    ).encode()
    field_map = {
        "E-mail aziendale": "email",
        "numero_addetti": "employees",
        "Giro d'affari": "annual_revenue_eur",
    }
    event = events(form.parse(body, "application/json", field_map, NOW, "content.downloaded"))[0]
    assert event.id == "form:sub-42"
    assert event.type == "content.downloaded"
    assert event.attributes == {"employees": 5000, "annual_revenue_eur": 1_000_001}
    assert event.occurred_at == datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def test_form_problems() -> None:
    out = form.parse(b'{"nome": "Anna"}', "application/json", {}, NOW)
    assert isinstance(out[0], AdapterError) and "email" in out[0].error
    out = form.parse(b'{"email": "a@b.it", "dipendenti": "tanti"}', "application/json", {}, NOW)
    event = events(out)[0]
    assert "employees" not in event.attributes
    assert "tanti" in event.properties["attribute_errors"]["employees"]
    batch = form.parse(b'[{"email": "a@b.it"}, {"email": "nope"}]', "application/json", {}, NOW)
    assert isinstance(batch[0], CanonicalEvent) and isinstance(batch[1], AdapterError)
    with pytest.raises(PayloadError, match="content type"):
        form.parse(b"<xml/>", "application/xml", {}, NOW)
    with pytest.raises(PayloadError, match="event type"):
        form.parse(b'{"email": "a@b.it"}', "application/json", {}, NOW, "Not A Type")
    with pytest.raises(PayloadError):
        form.parse(b"[1, 2]", "application/json", {}, NOW)


# --- configuration ----------------------------------------------------------------------------


def settings_of(**values: Any) -> Settings:
    """Settings from ``values`` (and no ``.env`` file), as ``tests/conftest.py`` builds them."""
    return Settings(_env_file=None, **values)


def test_source_config_names_the_variable_to_set() -> None:
    settings = settings_of()
    for name in ADAPTERS:
        with pytest.raises(SourceNotConfigured, match=f"LEADSCORE_WEBHOOK_{name.upper()}_SECRET"):
            source_config(name, settings)
    configured = settings_of(
        webhook_form_secret="t",
        webhook_form_field_map="ruolo=role, n_dip=employees",
        webhook_typeform_secret="s",
        webhook_typeform_field_map='{"job": "role"}',
        webhook_mandrill_secret="k",
        webhook_mandrill_url=p.MANDRILL_URL,
    )
    assert source_config("form", configured).field_map == {"ruolo": "role", "n_dip": "employees"}
    assert source_config("typeform", configured).field_map == {"job": "role"}
    assert source_config("mandrill", configured).signed_url == p.MANDRILL_URL
    with pytest.raises(SettingsError, match="LEADSCORE_WEBHOOK_TYPEFORM_FIELD_MAP"):
        load_settings(
            _env_file=None, webhook_typeform_secret="s", webhook_typeform_field_map="{oops"
        )
