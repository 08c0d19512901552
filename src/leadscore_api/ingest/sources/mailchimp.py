"""Mailchimp audience webhooks: ``application/x-www-form-urlencoded`` with ``type``, ``fired_at``
and ``data[...]`` fields.

Mailchimp does not sign these requests; the documented protection is a secret in the webhook
URL, so the URL carries ``?token=<LEADSCORE_WEBHOOK_MAILCHIMP_SECRET>``. Mailchimp checks the URL
with a GET before saving it (answered 200 by the router). There is no event id: the id is
derived from all the form fields (``fired_at`` included), so a retry of the same POST is a
duplicate and two real changes are two events. ``fired_at`` (``YYYY-MM-DD HH:MM:SS``) carries no
zone and is read as UTC.

Merge fields (``data[merges][FNAME]``, ``data[merges][COMPANY]``, custom ones such as
``data[merges][RUOLO]``) become lead attributes through the same field map as website forms
(``LEADSCORE_WEBHOOK_FORM_FIELD_MAP`` plus the built-in Italian/English names; ``FNAME`` and
``LNAME`` are Mailchimp's defaults for first and last name).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from leadscore_api.ingest.attributes import map_fields
from leadscore_api.ingest.signatures import PayloadError, check_token
from leadscore_api.ingest.sources.base import (
    Adapter,
    AdapterError,
    Ignored,
    Item,
    SourceConfig,
    Verified,
    WebhookRequest,
    derive_id,
    iso_time,
    load_form,
    make_event,
    type_for,
)

SOURCE = "mailchimp"
_KEY = re.compile(r"^data((?:\[[^\[\]]*\])+)$")

#: Mailchimp's own merge tags, before the shared field map is consulted.
MERGE_TAGS = {"FNAME": "first_name", "LNAME": "last_name", "EMAIL": "email"}


def unflatten(fields: list[tuple[str, str]]) -> dict[str, Any]:
    """``data[merges][FNAME]=Anna`` → ``{"data": {"merges": {"FNAME": "Anna"}}}``.

    ``data[merges][INTERESTS][]``-style repeated keys (empty brackets) become lists.
    """
    result: dict[str, Any] = {}
    for key, value in fields:
        match = _KEY.match(key)
        if match is None:
            result[key] = value
            continue
        path = re.findall(r"\[([^\[\]]*)\]", match.group(1))
        node: dict[str, Any] = result.setdefault("data", {})
        if not isinstance(node, dict):
            continue
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            last = path[-1]
            if last == "":
                continue
            existing = node.get(last)
            if existing is None:
                node[last] = value
            elif isinstance(existing, list):
                existing.append(value)
            else:
                node[last] = [existing, value]
    return result


def _merge_attributes(
    merges: Any, field_map: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    if not isinstance(merges, dict):
        return {}, {}
    pairs: list[tuple[str, Any]] = []
    for tag, value in merges.items():
        if isinstance(value, dict):  # GROUPINGS, ADDRESS: structured, not an attribute
            continue
        name = str(tag)
        pairs.append((name if name in field_map else MERGE_TAGS.get(name, name), value))
    attributes, _unmapped, errors = map_fields(pairs, field_map)
    attributes.pop("email", None)
    attributes.pop("external_id", None)
    return attributes, errors


def parse(raw_body: bytes, field_map: Mapping[str, str]) -> list[Item]:
    """The one event of a Mailchimp audience webhook POST."""
    fields = load_form(raw_body)
    payload = unflatten(fields)
    kind = payload.get("type")
    if not isinstance(kind, str) or not kind:
        raise PayloadError("the form has no 'type' field (subscribe, unsubscribe, profile, ...)")
    data = payload.get("data")
    if not isinstance(data, dict):
        raise PayloadError("the form has no data[...] fields")
    event_id = derive_id(SOURCE, sorted(fields))
    if kind == "campaign":
        reason = "campaign events describe a campaign, not a lead"
        return [Ignored(index=0, id=event_id, reason=reason)]
    try:
        occurred_at = iso_time(payload.get("fired_at"), "fired_at")
    except ValueError as exc:
        return [AdapterError(index=0, error=str(exc), id=event_id)]
    email = data.get("email") if kind != "upemail" else data.get("old_email")
    if not isinstance(email, str) or not email:
        return [AdapterError(index=0, error="the form has no data[email]", id=event_id)]
    attributes, errors = _merge_attributes(data.get("merges"), field_map)
    properties: dict[str, Any] = {
        "platform_event": kind,
        "list_id": data.get("list_id"),
        "campaign": data.get("campaign_id"),
        "action": data.get("action"),
        "reason": data.get("reason"),
        "new_email": data.get("new_email"),
        "attribute_errors": errors or None,
    }
    if kind == "subscribe":
        event_type = "newsletter.subscribed"
    elif kind == "unsubscribe":
        event_type = "email.unsubscribed"
    elif kind == "cleaned":
        # "cleaned" = removed after hard bounces, or after an abuse (spam) complaint.
        abuse = str(data.get("reason") or "").lower() == "abuse"
        event_type = "email.spam_reported" if abuse else "email.bounced"
    elif kind == "profile":
        event_type = "newsletter.profile_updated"
    elif kind == "upemail":
        event_type = "newsletter.email_changed"
    else:
        event_type = type_for(SOURCE, kind)
    return [
        make_event(
            0,
            id=event_id,
            type=event_type,
            occurred_at=occurred_at,
            lead={"email": email},
            source=SOURCE,
            properties=properties,
            attributes=attributes,
            raw=payload,
        )
    ]


def _verify(request: WebhookRequest, config: SourceConfig) -> Verified:
    assert config.secret is not None
    check_token(request.headers, request.query, config.secret)
    return Verified()


def _parse(request: WebhookRequest, config: SourceConfig) -> list[Item]:
    return parse(request.body, config.field_map)


ADAPTER = Adapter(name=SOURCE, verify=_verify, parse=_parse)
