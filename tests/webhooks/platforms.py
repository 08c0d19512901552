"""Requests as each platform sends them: documented payload shapes, signed with test keys.

The payloads follow the examples in the platforms' own documentation (SendGrid Event Webhook
reference, Mailgun "Webhook Payloads", Mailchimp "Synchronize Audience Data with Webhooks",
Mandrill webhook format, Postmark webhook pages, Brevo "Transactional webhooks", Typeform
"Example payload"); the keys and secrets are created here, never real ones.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

MAILGUN_KEY = "key-test-mailgun-signing"
MANDRILL_KEY = "test-mandrill-webhook-key"
MANDRILL_URL = "https://leads.example.it/v1/webhooks/mandrill"
TYPEFORM_SECRET = "test-typeform-secret"
BASIC_SECRET = "leadscore:s3cret-pass"
TOKEN = "test-token-0123456789"


@dataclass
class SignedRequest:
    """A body, its headers and query, ready to POST or to feed an adapter."""

    body: bytes
    headers: dict[str, str]
    query: dict[str, str] = field(default_factory=dict)


class SendGridKeys:
    """An ECDSA P-256 key pair; ``public_b64`` is the key as SendGrid's settings show it."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        der = self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_b64 = base64.b64encode(der).decode()

    def sign(self, body: bytes, timestamp: int | None = None) -> SignedRequest:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        signature = self.private.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
        return SignedRequest(
            body=body,
            headers={
                "Content-Type": "application/json",
                "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
                "X-Twilio-Email-Event-Webhook-Timestamp": ts,
            },
        )


def sendgrid_event(
    event: str, email: str, sg_event_id: str, timestamp: int | None = None, **extra: Any
) -> dict[str, Any]:
    """One event in the shape of SendGrid's Event Webhook reference."""
    payload: dict[str, Any] = {
        "email": email,
        "timestamp": int(time.time()) if timestamp is None else timestamp,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": event,
        "category": "cat facts",
        "sg_event_id": sg_event_id,
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
    }
    if event in ("open", "click"):
        payload["useragent"] = "Mozilla/4.0 (compatible; MSIE 6.1; Windows XP)"
        payload["ip"] = "255.255.255.255"
    if event == "click":
        payload["url"] = "https://www.example.it/pricing"
    if event == "bounce":
        payload.update(reason="500 unknown recipient", status="5.0.0", type="bounce")
    payload.update(extra)
    return payload


def mailgun_body(
    event: str,
    recipient: str,
    event_id: str,
    *,
    key: str = MAILGUN_KEY,
    timestamp: int | None = None,
    token: str | None = None,
    **extra: Any,
) -> bytes:
    """A Mailgun webhook body (``signature`` + ``event-data``) as in "Webhook Payloads"."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    tok = token or hashlib.sha256(f"{event_id}{ts}".encode()).hexdigest()[:50]
    data: dict[str, Any] = {
        "event": event,
        "id": event_id,
        "timestamp": float(ts) + 0.123456,
        "log-level": "info",
        "recipient": recipient,
        "recipient-domain": recipient.split("@")[1],
        "tags": ["newsletter", "novembre"],
        "campaigns": [],
        "user-variables": {},
        "message": {
            "headers": {
                "to": recipient,
                "message-id": "20260203192638.000be97f99f8cea1@sample.mailgun.com",
                "from": "Sample Sender <sender@sample.mailgun.com>",
                "subject": "Sample webhook payload",
            }
        },
    }
    if event == "clicked":
        data["url"] = "https://www.example.it/pricing"
    if event == "failed":
        data.update(severity="permanent", reason="bounce")
        data["delivery-status"] = {"code": 550, "description": "No such mailbox"}
    data.update(extra)
    signature = hmac.new(key.encode(), f"{ts}{tok}".encode(), hashlib.sha256).hexdigest()
    return json.dumps(
        {"signature": {"timestamp": ts, "token": tok, "signature": signature}, "event-data": data}
    ).encode()


def mailchimp_form(
    kind: str, email: str, fired_at: str = "2026-11-20 10:00:00", **merges: str
) -> bytes:
    """An audience webhook POST body, URL-encoded with ``data[...]`` keys as Mailchimp sends."""
    fields: list[tuple[str, str]] = [
        ("type", kind),
        ("fired_at", fired_at),
        ("data[id]", "8a25ff1d98"),
        ("data[list_id]", "a6b5da1054"),
        ("data[email]", email),
        ("data[email_type]", "html"),
        ("data[ip_opt]", "10.20.10.30"),
        ("data[merges][EMAIL]", email),
        ("data[merges][FNAME]", "Anna"),
        ("data[merges][LNAME]", "Rossi"),
        ("data[merges][INTERESTS]", "Group1,Group2"),
    ]
    fields.extend((f"data[merges][{k}]", v) for k, v in merges.items())
    if kind == "unsubscribe":
        fields.extend(
            [
                ("data[action]", "unsub"),
                ("data[reason]", "manual"),
                ("data[campaign_id]", "cb398d21d2"),
            ]
        )
    if kind == "cleaned":
        fields = [
            ("type", "cleaned"),
            ("fired_at", fired_at),
            ("data[list_id]", "a6b5da1054"),
            ("data[campaign_id]", "4fjk2ma9xd"),
            ("data[reason]", "hard"),
            ("data[email]", email),
        ]
    return urlencode(fields).encode()


def mandrill_event(
    event: str, email: str, ts: int, msg_id: str = "exampleaaaaaaaaaaaaaaaaaaaaaaaaa"
) -> dict[str, Any]:
    """One element of ``mandrill_events`` as in Mandrill's webhook format."""
    payload: dict[str, Any] = {
        "event": event,
        "msg": {
            "ts": ts - 100,
            "subject": "This an example webhook message",
            "email": email,
            "sender": "example.sender@mandrillapp.com",
            "tags": ["webhook-example"],
            "opens": [],
            "clicks": [],
            "state": "sent",
            "metadata": {"user_id": 111},
            "_id": msg_id,
            "_version": "exampleaaaaaaaaaaaaaaa",
        },
        "_id": msg_id,
        "ts": ts,
    }
    if event == "click":
        payload["url"] = "https://www.example.it/pricing"
    if event in ("open", "click"):
        payload["ip"] = "127.0.0.1"
        payload["user_agent"] = "Mozilla/5.0"
    return payload


def mandrill_request(
    events: list[Any], key: str = MANDRILL_KEY, url: str = MANDRILL_URL
) -> SignedRequest:
    """A Mandrill POST: form field ``mandrill_events``, signed over URL + sorted fields."""
    value = json.dumps(events)
    signed = url + "mandrill_events" + value
    signature = base64.b64encode(
        hmac.new(key.encode(), signed.encode(), hashlib.sha1).digest()
    ).decode()
    return SignedRequest(
        body=urlencode({"mandrill_events": value}).encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Mandrill-Signature": signature,
        },
    )


def basic_auth(secret: str = BASIC_SECRET) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(secret.encode()).decode()}


POSTMARK_OPEN: dict[str, Any] = {
    "RecordType": "Open",
    "MessageStream": "outbound",
    "FirstOpen": True,
    "Client": {"Name": "Chrome 35.0.1916.153", "Company": "Google", "Family": "Chrome"},
    "OS": {"Name": "OS X 10.7 Lion", "Company": "Apple Computer, Inc.", "Family": "OS X 10"},
    "Platform": "WebMail",
    "UserAgent": "Mozilla/5.0",
    "Geo": {"CountryISOCode": "IT", "Country": "Italy", "City": "Milano"},
    "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
    "Metadata": {"a_key": "a_value"},
    "ReceivedAt": "2026-11-20T10:00:00.1234567Z",
    "Tag": "welcome-email",
    "Recipient": "john@example.com",
}

POSTMARK_CLICK: dict[str, Any] = {
    "RecordType": "Click",
    "MessageStream": "outbound",
    "ClickLocation": "HTML",
    "Platform": "Desktop",
    "UserAgent": "Mozilla/5.0",
    "OriginalLink": "https://www.example.it/pricing",
    "MessageID": "00000000-0000-0000-0000-000000000000",
    "ReceivedAt": "2026-11-20T10:05:00Z",
    "Tag": "welcome-email",
    "Recipient": "john@example.com",
}

POSTMARK_BOUNCE: dict[str, Any] = {
    "RecordType": "Bounce",
    "MessageStream": "outbound",
    "ID": 4323372036854775807,
    "Type": "HardBounce",
    "TypeCode": 1,
    "Name": "Hard bounce",
    "Tag": "Test",
    "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
    "Metadata": {"a_key": "a_value"},
    "ServerID": 23,
    "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
    "Details": "Test bounce details",
    "Email": "john@example.com",
    "From": "sender@example.com",
    "BouncedAt": "2026-11-20T13:28:10.2735393-04:00",
    "DumpAvailable": True,
    "Inactive": True,
    "CanActivate": True,
    "Subject": "Test subject",
    "Content": "Return-Path:....",
}

POSTMARK_SUBSCRIPTION_CHANGE: dict[str, Any] = {
    "RecordType": "SubscriptionChange",
    "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
    "ServerID": 123456,
    "MessageStream": "outbound",
    "ChangedAt": "2026-11-20T16:39:50.123Z",
    "Recipient": "john@example.com",
    "Origin": "Recipient",
    "SuppressSending": True,
    "SuppressionReason": "ManualSuppression",
    "Tag": "my-tag",
    "Metadata": {"example": "value"},
}


def brevo_event(event: str, email: str, ts_event: int, **extra: Any) -> dict[str, Any]:
    """One Brevo transactional webhook event (one per POST), as in "Transactional webhooks"."""
    payload: dict[str, Any] = {
        "event": event,
        "email": email,
        "id": 123456,
        "date": "2026-11-20 11:00:00",
        "ts": ts_event,
        "message-id": "<202611201100.12345678901@smtp-relay.mailin.fr>",
        "ts_event": ts_event,
        "subject": "Offerta riservata",
        "X-Mailin-custom": "some_custom_header",
        "sending_ip": "185.41.28.109",
        "ts_epoch": ts_event * 1000,
        "template_id": 22,
        "tags": ["promo-novembre"],
    }
    if event == "click":
        payload["link"] = "https://www.example.it/pricing"
    if event in ("hard_bounce", "soft_bounce"):
        payload["reason"] = "550 5.1.1 user unknown"
    payload.update(extra)
    return payload


def typeform_body(email: str, token: str = "a3a12ec67a1365927098a606107fac15") -> bytes:
    """A ``form_response`` in the shape of Typeform's example payload, with refs we map."""
    payload = {
        "event_id": "LtWXD3crgy",
        "event_type": "form_response",
        "form_response": {
            "form_id": "lT4Z3j",
            "token": token,
            "submitted_at": "2026-11-20T10:00:00Z",
            "landed_at": "2026-11-20T09:58:00Z",
            "hidden": {"source": "webinar"},
            "calculated": {"score": 9},
            "definition": {
                "id": "lT4Z3j",
                "title": "Richiesta informazioni",
                "fields": [
                    {
                        "id": "DlXFaesGBpoF",
                        "title": "Come ti chiami?",
                        "type": "short_text",
                        "ref": "nome",
                    },
                    {
                        "id": "SMEUb7VJz92Q",
                        "title": "La tua email",
                        "type": "email",
                        "ref": "email_ref",
                    },
                    {
                        "id": "JwWggjAKtOkA",
                        "title": "Qual è il tuo ruolo?",
                        "type": "multiple_choice",
                        "ref": "job",
                    },
                    {
                        "id": "KoJxDM3c6x8h",
                        "title": "Quanti dipendenti avete?",
                        "type": "number",
                        "ref": "dipendenti",
                    },
                    {
                        "id": "PNe8ZKBK8C2Q",
                        "title": "Fatturato annuo",
                        "type": "dropdown",
                        "ref": "rev",
                    },
                    {
                        "id": "Q7M2XAwY04dW",
                        "title": "Settore",
                        "type": "short_text",
                        "ref": "settore",
                    },
                ],
            },
            "answers": [
                {
                    "type": "text",
                    "text": "Anna",
                    "field": {"id": "DlXFaesGBpoF", "type": "short_text", "ref": "nome"},
                },
                {
                    "type": "email",
                    "email": email,
                    "field": {"id": "SMEUb7VJz92Q", "type": "email", "ref": "email_ref"},
                },
                {
                    "type": "choice",
                    "choice": {"label": "Responsabile acquisti"},
                    "field": {"id": "JwWggjAKtOkA", "type": "multiple_choice", "ref": "job"},
                },
                {
                    "type": "number",
                    "number": 250,
                    "field": {"id": "KoJxDM3c6x8h", "type": "number", "ref": "dipendenti"},
                },
                {
                    "type": "text",
                    "text": "5.000.000",
                    "field": {"id": "PNe8ZKBK8C2Q", "type": "dropdown", "ref": "rev"},
                },
                {
                    "type": "text",
                    "text": "manifatturiero",
                    "field": {"id": "Q7M2XAwY04dW", "type": "short_text", "ref": "settore"},
                },
            ],
        },
    }
    return json.dumps(payload).encode()


def typeform_request(body: bytes, secret: str = TYPEFORM_SECRET) -> SignedRequest:
    digest = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    return SignedRequest(
        body=body,
        headers={"Content-Type": "application/json", "Typeform-Signature": f"sha256={digest}"},
    )
