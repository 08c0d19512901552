"""Typeform webhooks: ``{"event_id", "event_type": "form_response", "form_response": {...}}``.

Typeform signs the raw body with HMAC-SHA256 under the secret set on the webhook and sends
``Typeform-Signature: sha256=<base64 digest>``. There is no signed timestamp, so replays are
stopped by idempotency alone: the event id is the response's ``token`` (one per submission, the
same on every redelivery), falling back to ``event_id``.

Answers become attributes through ``LEADSCORE_WEBHOOK_TYPEFORM_FIELD_MAP``: keys are a field's
``ref`` (set in Typeform's editor, stable when the question is reworded) or its title, values
are canonical attributes. Unmapped fields whose ref or title is itself a known field name
("ruolo", "employees", "email") are understood too, and so are hidden fields. The answer of type
``email`` is the lead's email.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from leadscore_api.ingest.attributes import map_fields, resolve_field
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
    iso_time,
    load_json,
    make_event,
    prefixed_id,
)

SOURCE = "typeform"
SIGNATURE_HEADER = "Typeform-Signature"


def signature_for(raw_body: bytes, secret: str) -> str:
    """The header value Typeform sends for ``raw_body``: ``sha256=`` + base64 HMAC-SHA256."""
    return "sha256=" + base64.b64encode(hmac_digest(secret, raw_body, "sha256")).decode()


def verify(headers: Mapping[str, str], raw_body: bytes, secret: str) -> None:
    """Check ``Typeform-Signature`` over the raw body."""
    provided = header(headers, SIGNATURE_HEADER)
    if not provided:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    if not secure_equals(signature_for(raw_body, secret), provided.strip()):
        raise SignatureError(f"the {SIGNATURE_HEADER} does not match the body")


def answer_value(answer: dict[str, Any]) -> Any:
    """The value of one answer, whatever its type (text, number, choice, choices, ...)."""
    kind = answer.get("type")
    value = answer.get(kind) if isinstance(kind, str) else None
    if kind == "choice" and isinstance(value, dict):
        return value.get("label") or value.get("other")
    if kind == "choices" and isinstance(value, dict):
        labels = [str(v) for v in value.get("labels") or []]
        if value.get("other"):
            labels.append(str(value["other"]))
        return labels
    if kind == "payment" and isinstance(value, dict):
        return value.get("amount")
    return value


def _field_names(field: dict[str, Any], titles: Mapping[str, str]) -> list[str]:
    names = []
    if field.get("ref"):
        names.append(str(field["ref"]))
    title = titles.get(str(field.get("id")))
    if title:
        names.append(title)
    return names


def parse(raw_body: bytes, field_map: Mapping[str, str], received_at: datetime) -> list[Item]:
    """The submission of one Typeform webhook as a ``form.submitted`` event."""
    payload = load_json(raw_body)
    if not isinstance(payload, dict):
        raise PayloadError("a Typeform webhook body is a JSON object")
    response = payload.get("form_response")
    if not isinstance(response, dict):
        raise PayloadError("the body has no 'form_response' object")
    platform_id = response.get("token") or payload.get("event_id")
    if not platform_id:
        raise PayloadError("the body has neither form_response.token nor event_id")
    event_id = prefixed_id(SOURCE, platform_id)
    if payload.get("event_type") not in (None, "form_response"):
        reason = f"event_type {payload.get('event_type')!r} is not a form response"
        return [Ignored(index=0, id=event_id, reason=reason)]
    definition = as_dict(response.get("definition"))
    titles = {
        str(f.get("id")): str(f.get("title"))
        for f in definition.get("fields") or []
        if isinstance(f, dict) and f.get("title")
    }
    email: str | None = None
    pairs: list[tuple[str, Any]] = []
    for answer in response.get("answers") or []:
        if not isinstance(answer, dict) or not isinstance(answer.get("field"), dict):
            continue
        value = answer_value(answer)
        if answer.get("type") == "email" and isinstance(value, str) and email is None:
            email = value
        names = _field_names(answer["field"], titles)
        # The first name that the map or the built-in names resolve wins (ref before title).
        if names:
            chosen = next((n for n in names if resolve_field(n, field_map)), names[0])
            pairs.append((chosen, value))
    hidden = as_dict(response.get("hidden"))
    pairs.extend((str(k), v) for k, v in hidden.items())
    attributes, unmapped, errors = map_fields(pairs, field_map)
    email = email or attributes.get("email")
    external_id = attributes.pop("external_id", None)
    attributes.pop("email", None)
    if not email and not external_id:
        return [AdapterError(index=0, error="the response has no email answer", id=event_id)]
    try:
        occurred_at = iso_time(response.get("submitted_at"), "form_response.submitted_at")
    except ValueError:
        occurred_at = received_at
    calculated = response.get("calculated")
    properties: dict[str, Any] = {
        "form_id": response.get("form_id"),
        "form_title": definition.get("title"),
        "response_token": response.get("token"),
        "score": calculated.get("score") if isinstance(calculated, dict) else None,
        "hidden": hidden or None,
        "fields": unmapped or None,
        "attribute_errors": errors or None,
    }
    lead = {"email": email, "external_id": external_id}
    return [
        make_event(
            0,
            id=event_id,
            type="form.submitted",
            occurred_at=occurred_at,
            lead={k: v for k, v in lead.items() if v},
            source=SOURCE,
            properties=properties,
            attributes=attributes,
            raw=payload,
        )
    ]


def _verify(request: WebhookRequest, config: SourceConfig) -> Verified:
    assert config.secret is not None
    verify(request.headers, request.body, config.secret)
    return Verified()


def _parse(request: WebhookRequest, config: SourceConfig) -> list[Item]:
    return parse(request.body, config.field_map, request.received_at)


ADAPTER = Adapter(name=SOURCE, verify=_verify, parse=_parse)
