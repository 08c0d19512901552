"""Postmark webhooks: one JSON object per event, told apart by ``RecordType``.

Postmark secures webhooks with HTTP basic auth written into the webhook URL
(``https://user:password@host/v1/webhooks/postmark``); ``LEADSCORE_WEBHOOK_POSTMARK_SECRET`` is
that ``user:password``. Bounces and spam complaints carry their own numeric ``ID``; opens, clicks,
deliveries and subscription changes are identified by ``MessageID``, the record type, the time
and (for clicks) the link.

A hard bounce or spam complaint also produces a ``SubscriptionChange`` (the address is
suppressed). To avoid counting the same bounce twice, only a manual suppression (the recipient
unsubscribed) maps to ``email.unsubscribed``; the others are stored as ``email.suppressed``.
"""

from __future__ import annotations

from typing import Any

from leadscore_api.ingest.signatures import PayloadError, check_basic_auth
from leadscore_api.ingest.sources.base import (
    Adapter,
    AdapterError,
    Item,
    SourceConfig,
    Verified,
    WebhookRequest,
    categories,
    derive_id,
    first,
    iso_time,
    load_json,
    make_event,
    prefixed_id,
    type_for,
)

SOURCE = "postmark"

#: Bounce ``Type`` values after which Postmark stops sending to the address (permanent).
PERMANENT_BOUNCES = frozenset(
    {
        "HardBounce",
        "BadEmailAddress",
        "ManuallyDeactivated",
        "SpamNotification",
        "Blocked",
        "DMARCPolicy",
    }
)


def _classify(record: dict[str, Any]) -> tuple[str, str | None, Any]:
    """(event type, time field, platform id or None) of a Postmark record."""
    kind = str(record.get("RecordType") or "")
    if kind == "Bounce":
        permanent = record.get("Type") in PERMANENT_BOUNCES or record.get("Inactive") is True
        return (
            ("email.bounced" if permanent else "email.soft_bounced"),
            "BouncedAt",
            record.get("ID"),
        )
    if kind == "SpamComplaint":
        return "email.spam_reported", "BouncedAt", record.get("ID")
    if kind == "Delivery":
        return "email.delivered", "DeliveredAt", None
    if kind == "Open":
        return "email.opened", "ReceivedAt", None
    if kind == "Click":
        return "email.clicked", "ReceivedAt", None
    if kind == "SubscriptionChange":
        if record.get("SuppressSending") is False:
            return "email.resubscribed", "ChangedAt", None
        if record.get("SuppressionReason") == "ManualSuppression":
            return "email.unsubscribed", "ChangedAt", None
        return "email.suppressed", "ChangedAt", None
    return type_for(SOURCE, kind or "unknown"), None, None


def parse_record(index: int, record: dict[str, Any], received_at: Any) -> Item:
    """One Postmark record as a canonical event."""
    kind = str(record.get("RecordType") or "")
    event_type, time_field, platform_id = _classify(record)
    event_id = (
        prefixed_id(SOURCE, f"{kind.lower()}:{platform_id}")
        if platform_id is not None
        else derive_id(SOURCE, record)
        if time_field is None
        else derive_id(
            SOURCE,
            kind,
            record.get("MessageID"),
            first(record, "Recipient", "Email"),
            record.get(time_field) if time_field else None,
            record.get("OriginalLink"),
            record.get("SuppressSending"),
        )
    )
    try:
        occurred_at = iso_time(record.get(time_field), time_field) if time_field else received_at
    except ValueError as exc:
        return AdapterError(index=index, error=str(exc), id=event_id)
    email = first(record, "Recipient", "Email")
    if not isinstance(email, str):
        error = "the record has no 'Recipient' or 'Email'"
        return AdapterError(index=index, error=error, id=event_id)
    properties: dict[str, Any] = {
        "platform_event": kind,
        "message_id": record.get("MessageID"),
        "category": categories(record.get("Tag")),
        "message_stream": record.get("MessageStream"),
        "url": record.get("OriginalLink"),
        "first_open": record.get("FirstOpen"),
        "bounce_type": record.get("Type"),
        "reason": record.get("Description") or record.get("SuppressionReason"),
        "metadata": record.get("Metadata") or None,
    }
    return make_event(
        index,
        id=event_id,
        type=event_type,
        occurred_at=occurred_at,
        lead={"email": email},
        source=SOURCE,
        properties=properties,
        raw=record,
    )


def parse(raw_body: bytes, received_at: Any) -> list[Item]:
    """The record of one Postmark POST (an array of records is read too)."""
    payload = load_json(raw_body)
    records = payload if isinstance(payload, list) else [payload]
    if not records or not all(isinstance(r, dict) for r in records):
        raise PayloadError("a Postmark webhook body is a JSON object with a 'RecordType'")
    if any(not r.get("RecordType") for r in records):
        raise PayloadError("the Postmark record has no 'RecordType'")
    return [parse_record(index, record, received_at) for index, record in enumerate(records)]


def _verify(request: WebhookRequest, config: SourceConfig) -> Verified:
    assert config.secret is not None
    check_basic_auth(request.headers, config.secret)
    return Verified()


def _parse(request: WebhookRequest, config: SourceConfig) -> list[Item]:
    return parse(request.body, request.received_at)


ADAPTER = Adapter(name=SOURCE, verify=_verify, parse=_parse)
