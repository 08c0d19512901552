"""Brevo (ex Sendinblue) webhooks: one JSON object per event, transactional or marketing.

Brevo does not sign webhooks; it sends HTTP basic auth when the webhook is created with
credentials (``https://user:password@host/v1/webhooks/brevo``), and
``LEADSCORE_WEBHOOK_BREVO_SECRET`` is that ``user:password``. Brevo's ``id`` is the webhook's id,
not the event's, so the event id is derived from the message id (``message-id``, or the campaign
id for marketing events), the event name, the event time and, for clicks, the link.

Transactional events are named ``request``, ``delivered``, ``opened``, ``unique_opened``,
``click``, ``hard_bounce``... and marketing events ``hardBounce``, ``uniqueOpened``,
``unsubscribe``...: both spellings are read (case and underscores ignored). ``ts_event`` is in
seconds (UTC), ``ts_epoch`` in milliseconds. Proxy opens (Apple Mail Privacy Protection) are
opens with ``properties.machine_open = true``, so rules can leave them out.
"""

from __future__ import annotations

from datetime import UTC, datetime
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
    expect_object,
    first,
    load_json,
    make_event,
    type_for,
    unix_time,
)

SOURCE = "brevo"

#: Brevo event names with case and underscores removed → canonical type.
EVENT_TYPES = {
    "request": "email.sent",
    "sent": "email.sent",
    "delivered": "email.delivered",
    "opened": "email.opened",
    "uniqueopened": "email.opened",
    "proxyopen": "email.opened",
    "uniqueproxyopen": "email.opened",
    "click": "email.clicked",
    "clicked": "email.clicked",
    "hardbounce": "email.bounced",
    "softbounce": "email.soft_bounced",
    "spam": "email.spam_reported",
    "complaint": "email.spam_reported",
    "unsubscribed": "email.unsubscribed",
    "unsubscribe": "email.unsubscribed",
    "blocked": "email.blocked",
    "invalid": "email.invalid",
    "invalidemail": "email.invalid",
    "deferred": "email.deferred",
    "error": "email.error",
}


def _normalised(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


def _occurred_at(event: dict[str, Any]) -> datetime:
    if event.get("ts_event") is not None:
        return unix_time(event["ts_event"], "ts_event")
    if event.get("ts_epoch") is not None:
        try:
            return datetime.fromtimestamp(float(event["ts_epoch"]) / 1000, UTC)
        except (TypeError, ValueError, OverflowError, OSError) as exc:
            message = f"ts_epoch is not a Unix time in milliseconds: {event['ts_epoch']!r}"
            raise ValueError(message) from exc
    return unix_time(event.get("ts"), "ts_event")


def parse_event(index: int, item: Any) -> Item:
    """One Brevo event object as a canonical event."""
    event = expect_object(item, index, f"event {index}")
    if isinstance(event, AdapterError):
        return event
    name = str(event.get("event") or "")
    if not name:
        return AdapterError(index=index, error="the event has no 'event' name")
    key = _normalised(name)
    link = first(event, "link", "URL", "url")
    message_id = first(event, "message-id", "message_id", "messageId")
    campaign = first(event, "camp_id", "campaign name", "campaign_name")
    event_id = derive_id(
        SOURCE,
        message_id or campaign,
        event.get("email"),
        key,
        first(event, "ts_event", "ts_epoch", "ts"),
        link if key in ("click", "clicked") else None,
    )
    try:
        occurred_at = _occurred_at(event)
    except ValueError as exc:
        return AdapterError(index=index, error=str(exc), id=event_id)
    email = event.get("email")
    if not isinstance(email, str) or not email:
        return AdapterError(index=index, error="the event has no recipient 'email'", id=event_id)
    properties: dict[str, Any] = {
        "platform_event": name,
        "message_id": message_id,
        "category": categories(first(event, "tags", "tag")),
        "campaign": campaign,
        "subject": event.get("subject"),
        "url": link,
        "reason": event.get("reason"),
        "template_id": event.get("template_id"),
        "machine_open": True if "proxy" in key else None,
        "first_open": True if key.startswith("unique") else None,
    }
    return make_event(
        index,
        id=event_id,
        type=EVENT_TYPES.get(key, type_for(SOURCE, name)),
        occurred_at=occurred_at,
        lead={"email": email},
        source=SOURCE,
        properties=properties,
        raw=event,
    )


def parse(raw_body: bytes) -> list[Item]:
    """The event of one Brevo POST (an array of events is read too)."""
    payload = load_json(raw_body)
    if isinstance(payload, dict):
        if not payload.get("event"):
            raise PayloadError("the Brevo event has no 'event' name")
        return [parse_event(0, payload)]
    if isinstance(payload, list):
        return [parse_event(index, item) for index, item in enumerate(payload)]
    raise PayloadError("a Brevo webhook body is a JSON object with an 'event'")


def _verify(request: WebhookRequest, config: SourceConfig) -> Verified:
    assert config.secret is not None
    check_basic_auth(request.headers, config.secret)
    return Verified()


def _parse(request: WebhookRequest, config: SourceConfig) -> list[Item]:
    return parse(request.body)


ADAPTER = Adapter(name=SOURCE, verify=_verify, parse=_parse)
