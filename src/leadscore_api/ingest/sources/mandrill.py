"""Mailchimp Transactional (Mandrill) webhooks: form field ``mandrill_events`` = a JSON array.

``X-Mandrill-Signature`` is base64(HMAC-SHA1(webhook key, URL + every POST field name and value,
sorted by name, concatenated)), where URL is the webhook URL exactly as registered in Mandrill.
Behind a proxy the URL the service sees may differ (scheme, host, port), so
``LEADSCORE_WEBHOOK_MANDRILL_URL`` names the registered URL; without it the request URL is used.
Mandrill checks a new webhook with a HEAD request (answered 200 by the router) and only then shows
its key, so the key can be configured after the webhook is created.

Mandrill events carry the *message* id ``_id`` (shared by the send, the opens and the clicks of
one message), so the event id is derived from ``_id``, the event name, ``ts`` and, for clicks,
the URL. Sync events (allowlist/denylist changes) and inbound messages describe no lead.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any

from leadscore_api.ingest.signatures import (
    PayloadError,
    SignatureError,
    header,
    hmac_digest,
    secure_equals,
)
from leadscore_api.ingest.sources.base import (
    Adapter,
    AdapterError,
    Ignored,
    Item,
    SourceConfig,
    Verified,
    WebhookRequest,
    as_dict,
    categories,
    derive_id,
    expect_object,
    load_form,
    make_event,
    type_for,
    unix_time,
)

SOURCE = "mandrill"
SIGNATURE_HEADER = "X-Mandrill-Signature"

EVENT_TYPES = {
    "send": "email.sent",
    "deferral": "email.deferred",
    "hard_bounce": "email.bounced",
    "soft_bounce": "email.soft_bounced",
    "delivered": "email.delivered",
    "open": "email.opened",
    "click": "email.clicked",
    "spam": "email.spam_reported",
    "unsub": "email.unsubscribed",
    "reject": "email.rejected",
}


def signature_for(url: str, fields: Sequence[tuple[str, str]], key: str) -> str:
    """Mandrill's signature of a POST: base64 HMAC-SHA1 of URL + sorted (name + value)s."""
    signed = url + "".join(name + value for name, value in sorted(fields, key=lambda f: f[0]))
    return base64.b64encode(hmac_digest(key, signed.encode(), "sha1")).decode()


def verify(
    headers: Mapping[str, str], url: str, fields: Sequence[tuple[str, str]], key: str
) -> None:
    """Check ``X-Mandrill-Signature`` against the registered URL and the POST fields."""
    provided = header(headers, SIGNATURE_HEADER)
    if not provided:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    if not secure_equals(signature_for(url, fields, key), provided.strip()):
        raise SignatureError(
            f"the {SIGNATURE_HEADER} does not match (is LEADSCORE_WEBHOOK_MANDRILL_URL exactly "
            "the URL registered in Mandrill?)"
        )


def parse_event(index: int, item: Any) -> Item:
    """One element of ``mandrill_events``."""
    event = expect_object(item, index, f"event {index}")
    if isinstance(event, AdapterError):
        return event
    name = event.get("event")
    if not name:
        kind = event.get("type")
        if kind in ("whitelist", "blacklist", "allowlist", "denylist"):
            return Ignored(index=index, reason=f"{kind} sync events describe no lead")
        return AdapterError(index=index, error="the event has no 'event' name")
    if name == "inbound":
        return Ignored(index=index, reason="inbound messages are not lead activity")
    msg = as_dict(event.get("msg"))
    message_id = event.get("_id") or msg.get("_id")
    url = event.get("url")
    parts: list[Any] = [message_id, name, event.get("ts")]
    if name == "click":
        parts.append(url)
    event_id = derive_id(SOURCE, *parts) if message_id else derive_id(SOURCE, event)
    try:
        occurred_at = unix_time(event.get("ts"), "ts")
    except ValueError as exc:
        return AdapterError(index=index, error=str(exc), id=event_id)
    email = msg.get("email")
    if not isinstance(email, str) or not email:
        return AdapterError(index=index, error="the event has no msg.email", id=event_id)
    properties: dict[str, Any] = {
        "platform_event": name,
        "message_id": message_id,
        "category": categories(msg.get("tags")),
        "subject": msg.get("subject"),
        "url": url,
        "ip": event.get("ip"),
        "user_agent": event.get("user_agent"),
        "bounce_description": msg.get("bounce_description"),
        "metadata": msg.get("metadata") or None,
        "subaccount": msg.get("subaccount"),
    }
    return make_event(
        index,
        id=event_id,
        type=EVENT_TYPES.get(str(name), type_for(SOURCE, name)),
        occurred_at=occurred_at,
        lead={"email": email},
        source=SOURCE,
        properties=properties,
        raw=event,
    )


def parse(fields: Sequence[tuple[str, str]]) -> list[Item]:
    """The events of one Mandrill POST (up to 1,000), in order."""
    values = [value for name, value in fields if name == "mandrill_events"]
    if not values:
        raise PayloadError("the form has no 'mandrill_events' field")
    try:
        events = json.loads(values[0])
    except json.JSONDecodeError as exc:
        raise PayloadError(f"'mandrill_events' is not valid JSON: {exc.msg}") from exc
    if not isinstance(events, list):
        raise PayloadError("'mandrill_events' is not a JSON array")
    return [parse_event(index, item) for index, item in enumerate(events)]


def _verify(request: WebhookRequest, config: SourceConfig) -> Verified:
    assert config.secret is not None
    verify(
        request.headers, config.signed_url or request.url, load_form(request.body), config.secret
    )
    return Verified()


def _parse(request: WebhookRequest, config: SourceConfig) -> list[Item]:
    return parse(load_form(request.body))


ADAPTER = Adapter(name=SOURCE, verify=_verify, parse=_parse)
