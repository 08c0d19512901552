"""Mailgun webhooks: one JSON object, ``signature`` {timestamp, token, signature} + ``event-data``.

Mailgun signs ``timestamp + token`` (no separator) with HMAC-SHA256 under the webhook signing
key and sends the hex digest; events of a subaccount also carry ``parent-signature`` under the
primary account's key, and either one is accepted. The body itself is not signed, so a captured
(timestamp, token, signature) triple could be re-used with other event data until the timestamp
expires: the router remembers each token with a hash of its body (table
``webhook_replay_tokens``) and refuses the token with a different body. The same body again is
a retry and is answered, event by event, as ``duplicate``.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from leadscore_api.ingest.signatures import (
    PayloadError,
    SignatureError,
    check_timestamp,
    hmac_digest,
    secure_equals,
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
    load_json,
    make_event,
    nested,
    prefixed_id,
    type_for,
    unix_time,
)

SOURCE = "mailgun"

EVENT_TYPES = {
    "accepted": "email.accepted",
    "rejected": "email.rejected",
    "delivered": "email.delivered",
    "opened": "email.opened",
    "clicked": "email.clicked",
    "unsubscribed": "email.unsubscribed",
    "complained": "email.spam_reported",
    "stored": "email.stored",
}


def _payload(raw_body: bytes) -> dict[str, Any]:
    payload = load_json(raw_body)
    if not isinstance(payload, dict):
        raise PayloadError(
            "a Mailgun webhook body is a JSON object with 'signature' and 'event-data'"
        )
    return payload


def verify(payload: dict[str, Any], secret: str, now: datetime, tolerance_seconds: int) -> str:
    """Check the HMAC of ``timestamp + token`` and the timestamp's age; return the token."""
    signature = payload.get("signature")
    if not isinstance(signature, dict):
        raise SignatureError("the body has no 'signature' object")
    timestamp, token, digest = (signature.get(k) for k in ("timestamp", "token", "signature"))
    if not all(isinstance(v, str | int) and str(v) for v in (timestamp, token, digest)):
        raise SignatureError("'signature' needs 'timestamp', 'token' and 'signature'")
    expected = hmac_digest(secret, f"{timestamp}{token}".encode(), "sha256").hex()
    candidates = [str(digest)]
    parent = signature.get("parent-signature")
    if isinstance(parent, str) and parent:
        candidates.append(parent)
    # Evaluate every candidate so that timing does not depend on which one matched.
    matches = [secure_equals(expected, candidate.lower()) for candidate in candidates]
    if not any(matches):
        raise SignatureError("the Mailgun signature does not match timestamp + token")
    check_timestamp(str(timestamp), now, tolerance_seconds)
    return str(token)


def _event_type(data: dict[str, Any]) -> str:
    name = str(data.get("event") or "")
    if name == "failed":
        severity = str(data.get("severity") or "").lower()
        return "email.bounced" if severity == "permanent" else "email.deferred"
    return EVENT_TYPES.get(name, type_for(SOURCE, name))


def parse_payload(payload: dict[str, Any]) -> list[Item]:
    """The one event of a Mailgun webhook body."""
    data = payload.get("event-data")
    if not isinstance(data, dict):
        raise PayloadError("the body has no 'event-data' object")
    if not data.get("event"):
        raise PayloadError("'event-data' has no 'event' name")
    platform_id = data.get("id")
    event_id = prefixed_id(SOURCE, platform_id) if platform_id else derive_id(SOURCE, data)
    try:
        occurred_at = unix_time(data.get("timestamp"), "event-data.timestamp")
    except ValueError as exc:
        return [AdapterError(index=0, error=str(exc), id=event_id)]
    recipient = data.get("recipient")
    if not isinstance(recipient, str) or not recipient:
        return [AdapterError(index=0, error="'event-data' has no 'recipient'", id=event_id)]
    campaigns = data.get("campaigns")
    campaign = None
    if isinstance(campaigns, list) and campaigns and isinstance(campaigns[0], dict):
        campaign = campaigns[0].get("name") or campaigns[0].get("id")
    properties: dict[str, Any] = {
        "platform_event": data.get("event"),
        "message_id": nested(data, "message", "headers", "message-id"),
        "category": categories(data.get("tags")),
        "campaign": campaign,
        "url": data.get("url"),
        "severity": data.get("severity"),
        "reason": data.get("reason"),
        "delivery_status": nested(data, "delivery-status", "description")
        or nested(data, "delivery-status", "message"),
        "user_variables": data.get("user-variables") or None,
    }
    return [
        make_event(
            0,
            id=event_id,
            type=_event_type(data),
            occurred_at=occurred_at,
            lead={"email": recipient},
            source=SOURCE,
            properties=properties,
            raw=data,
        )
    ]


def parse(raw_body: bytes) -> list[Item]:
    return parse_payload(_payload(raw_body))


def body_fingerprint(raw_body: bytes) -> str:
    """What a replayed token is compared with: the sha256 of the body it first came with."""
    return hashlib.sha256(raw_body).hexdigest()


def _verify(request: WebhookRequest, config: SourceConfig) -> Verified:
    assert config.secret is not None
    token = verify(
        _payload(request.body), config.secret, request.received_at, config.tolerance_seconds
    )
    return Verified(replay_token=token)


def _parse(request: WebhookRequest, config: SourceConfig) -> list[Item]:
    return parse(request.body)


ADAPTER = Adapter(name=SOURCE, verify=_verify, parse=_parse)
