"""A website's own form: JSON or ``application/x-www-form-urlencoded``, authenticated by a token.

The form posts (directly, or through the site's backend or a form service) to
``/v1/webhooks/form?token=<LEADSCORE_WEBHOOK_FORM_SECRET>`` or with an ``X-Leadscore-Token``
header. Field names are mapped to canonical attributes by ``LEADSCORE_WEBHOOK_FORM_FIELD_MAP``
and, without configuration, by the built-in Italian and English names (``ruolo`` → role,
``dipendenti`` → employees, ``fatturato`` → annual_revenue_eur ...). Fields that map to nothing
are kept in ``properties.fields``.

The event is ``form.submitted`` unless the URL says otherwise (``?event=content.downloaded`` for
a white-paper form, ``?event=newsletter.subscribed`` for a signup form). A field named
``event_id`` or ``submission_id`` is the idempotency key; without one the id is a hash of the
fields, so a double-clicked submit button is stored once. ``submitted_at`` (RFC 3339), when sent,
is the event time; otherwise the time the request arrived.

A JSON array of such objects is a batch: each element is one submission.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from leadscore_api.ingest.attributes import map_fields
from leadscore_api.ingest.signatures import PayloadError, check_token
from leadscore_api.ingest.sources.base import (
    Adapter,
    AdapterError,
    Item,
    SourceConfig,
    Verified,
    WebhookRequest,
    derive_id,
    iso_time,
    load_form,
    load_json,
    make_event,
    prefixed_id,
)

SOURCE = "form"
_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
#: Fields that describe the submission, not the lead.
_META_FIELDS = (
    "event_id",
    "submission_id",
    "submitted_at",
    "token",
    "form_id",
    "form_name",
    "page_url",
)


def _pairs_from_form(fields: list[tuple[str, str]]) -> list[tuple[str, Any]]:
    """Repeated names (checkboxes, ``interessi[]``) become one list-valued field."""
    merged: dict[str, Any] = {}
    for raw_name, value in fields:
        name = raw_name[:-2] if raw_name.endswith("[]") else raw_name
        if name in merged:
            existing = merged[name]
            merged[name] = [*existing, value] if isinstance(existing, list) else [existing, value]
        else:
            merged[name] = [value] if raw_name.endswith("[]") else value
    return list(merged.items())


def parse_submission(
    index: int,
    fields: list[tuple[str, Any]],
    field_map: Mapping[str, str],
    event_type: str,
    received_at: datetime,
) -> Item:
    """One submission (its fields as name/value pairs) as a canonical event."""
    meta = {name: value for name, value in fields if name in _META_FIELDS}
    answers = [(name, value) for name, value in fields if name not in _META_FIELDS]
    platform_id = meta.get("event_id") or meta.get("submission_id")
    event_id = (
        prefixed_id(SOURCE, platform_id)
        if platform_id
        else derive_id(SOURCE, event_type, sorted((n, v) for n, v in fields if n != "token"))
    )
    attributes, unmapped, errors = map_fields(answers, field_map)
    email = attributes.pop("email", None)
    external_id = attributes.pop("external_id", None)
    if not email and not external_id:
        return AdapterError(
            index=index,
            error="the form has no email field (name it 'email', or map one to 'email')",
            id=event_id,
        )
    occurred_at = received_at
    if meta.get("submitted_at"):
        try:
            occurred_at = iso_time(meta["submitted_at"], "submitted_at")
        except ValueError as exc:
            return AdapterError(index=index, error=str(exc), id=event_id)
    lead = {k: str(v) for k, v in (("email", email), ("external_id", external_id)) if v}
    properties: dict[str, Any] = {
        "form_id": meta.get("form_id"),
        "form_name": meta.get("form_name"),
        "url": meta.get("page_url"),
        "fields": unmapped or None,
        "attribute_errors": errors or None,
    }
    return make_event(
        index,
        id=event_id,
        type=event_type,
        occurred_at=occurred_at,
        lead=lead,
        source=SOURCE,
        properties=properties,
        attributes=attributes,
        raw={name: value for name, value in fields if name != "token"},
    )


def parse(
    raw_body: bytes,
    content_type: str,
    field_map: Mapping[str, str],
    received_at: datetime,
    event_type: str = "form.submitted",
) -> list[Item]:
    """The submission(s) of one form POST, JSON or URL-encoded."""
    if not _TYPE.match(event_type) or len(event_type) > 100:
        raise PayloadError(f"?event={event_type!r} is not an event type such as content.downloaded")
    if content_type in ("application/x-www-form-urlencoded", ""):
        if content_type == "" and raw_body.lstrip()[:1] in (b"{", b"["):
            content_type = "application/json"
        else:
            fields = _pairs_from_form(load_form(raw_body))
            if not fields:
                raise PayloadError("the form is empty")
            return [parse_submission(0, fields, field_map, event_type, received_at)]
    if content_type == "application/json" or content_type.endswith("+json"):
        payload = load_json(raw_body)
        items = payload if isinstance(payload, list) else [payload]
        if not items or not all(isinstance(item, dict) for item in items):
            raise PayloadError(
                "a form body is a JSON object of field names and values (or an array of them)"
            )
        return [
            parse_submission(index, list(item.items()), field_map, event_type, received_at)
            for index, item in enumerate(items)
        ]
    raise PayloadError(
        f"unsupported content type {content_type!r}: send application/json or "
        "application/x-www-form-urlencoded"
    )


def _verify(request: WebhookRequest, config: SourceConfig) -> Verified:
    assert config.secret is not None
    check_token(request.headers, request.query, config.secret)
    return Verified()


def _parse(request: WebhookRequest, config: SourceConfig) -> list[Item]:
    return parse(
        request.body,
        request.content_type,
        config.field_map,
        request.received_at,
        request.query.get("event") or "form.submitted",
    )


ADAPTER = Adapter(name=SOURCE, verify=_verify, parse=_parse)
