"""Twilio SendGrid Event Webhook: a JSON array of events, signed with ECDSA P-256.

With "Signed Event Webhook Requests" on, SendGrid signs ``timestamp + raw body`` (no separator)
with its private key and sends the base64 DER signature in
``X-Twilio-Email-Event-Webhook-Signature`` and the timestamp in
``X-Twilio-Email-Event-Webhook-Timestamp``. The public key is shown in the SendGrid settings as
base64 DER (SubjectPublicKeyInfo): that text is ``LEADSCORE_WEBHOOK_SENDGRID_SECRET``.
SendGrid documents no timestamp tolerance; ours is ``webhook_timestamp_tolerance_seconds``.
Each event carries ``sg_event_id``, the idempotency key.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from leadscore_api.errors import SourceNotConfigured
from leadscore_api.ingest.signatures import (
    PayloadError,
    SignatureError,
    b64decode_strict,
    check_timestamp,
    header,
)
from leadscore_api.ingest.sources.base import (
    Adapter,
    AdapterError,
    Item,
    SourceConfig,
    Verified,
    WebhookRequest,
    categories,
    derive_id,
    expect_object,
    load_json,
    make_event,
    prefixed_id,
    type_for,
    unix_time,
)

SOURCE = "sendgrid"
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

#: SendGrid ``event`` → canonical type. ``bounce`` with ``type: blocked`` is handled apart.
EVENT_TYPES = {
    "processed": "email.processed",
    "dropped": "email.dropped",
    "deferred": "email.deferred",
    "delivered": "email.delivered",
    "bounce": "email.bounced",
    "blocked": "email.blocked",
    "open": "email.opened",
    "click": "email.clicked",
    "spamreport": "email.spam_reported",
    "unsubscribe": "email.unsubscribed",
    "group_unsubscribe": "email.unsubscribed",
    "group_resubscribe": "email.resubscribed",
}


@lru_cache(maxsize=8)
def load_public_key(secret: str) -> ec.EllipticCurvePublicKey:
    """The verification key from its base64 DER text (PEM is accepted too)."""
    text = secret.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(b64decode_strict(text))
    except ValueError as exc:
        raise SourceNotConfigured(
            "LEADSCORE_WEBHOOK_SENDGRID_SECRET is not a base64 DER public key "
            "(copy the verification key from SendGrid's Mail Settings > Event Webhook)"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SourceNotConfigured(
            "LEADSCORE_WEBHOOK_SENDGRID_SECRET is not an ECDSA P-256 public key"
        )
    return key


def verify(
    headers: Mapping[str, str], raw_body: bytes, secret: str, now: datetime, tolerance_seconds: int
) -> None:
    """Check SendGrid's ECDSA signature over ``timestamp + raw_body`` and the timestamp's age."""
    key = load_public_key(secret)
    signature_b64 = header(headers, SIGNATURE_HEADER)
    timestamp = header(headers, TIMESTAMP_HEADER)
    if not signature_b64 or not timestamp:
        raise SignatureError(f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER} header")
    try:
        signature = b64decode_strict(signature_b64)
    except ValueError as exc:
        raise SignatureError(f"{SIGNATURE_HEADER} is not base64") from exc
    try:
        key.verify(signature, timestamp.encode() + raw_body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise SignatureError(
            "the SendGrid signature does not match the body and timestamp"
        ) from exc
    check_timestamp(timestamp.strip(), now, tolerance_seconds)


def parse_event(index: int, item: Any) -> Item:
    """One SendGrid event object as a canonical event."""
    event = expect_object(item, index, f"event {index}")
    if isinstance(event, AdapterError):
        return event
    name = str(event.get("event") or "")
    if not name:
        return AdapterError(index=index, error="the event has no 'event' name")
    sg_event_id = event.get("sg_event_id")
    event_id = prefixed_id(SOURCE, sg_event_id) if sg_event_id else derive_id(SOURCE, event)
    if name == "bounce" and str(event.get("type") or "").lower() == "blocked":
        kind = EVENT_TYPES["blocked"]
    else:
        kind = EVENT_TYPES.get(name, type_for(SOURCE, name))
    try:
        occurred_at = unix_time(event.get("timestamp"), "timestamp")
    except ValueError as exc:
        return AdapterError(index=index, error=str(exc), id=event_id)
    email = event.get("email")
    if not isinstance(email, str) or not email:
        return AdapterError(index=index, error="the event has no recipient 'email'", id=event_id)
    properties: dict[str, Any] = {
        "platform_event": name,
        "message_id": event.get("sg_message_id") or event.get("smtp-id"),
        "category": categories(event.get("category")),
        "campaign": event.get("marketing_campaign_name") or event.get("marketing_campaign_id"),
        "url": event.get("url"),
        "reason": event.get("reason"),
        "status": event.get("status"),
        "bounce_classification": event.get("bounce_classification"),
        "asm_group_id": event.get("asm_group_id"),
        "machine_open": event.get("sg_machine_open"),
        "ip": event.get("ip"),
        "useragent": event.get("useragent"),
    }
    return make_event(
        index,
        id=event_id,
        type=kind,
        occurred_at=occurred_at,
        lead={"email": email},
        source=SOURCE,
        properties=properties,
        raw=event,
    )


def parse(raw_body: bytes) -> list[Item]:
    """The events of one SendGrid POST, in order; a bad event does not stop the others."""
    payload = load_json(raw_body)
    if not isinstance(payload, list):
        raise PayloadError("a SendGrid Event Webhook body is a JSON array of events")
    return [parse_event(index, item) for index, item in enumerate(payload)]


def _verify(request: WebhookRequest, config: SourceConfig) -> Verified:
    assert config.secret is not None
    verify(
        request.headers, request.body, config.secret, request.received_at, config.tolerance_seconds
    )
    return Verified()


def _parse(request: WebhookRequest, config: SourceConfig) -> list[Item]:
    return parse(request.body)


ADAPTER = Adapter(name=SOURCE, verify=_verify, parse=_parse)
