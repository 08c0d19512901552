"""A request body of ``POST /v1/events`` as canonical events, or errors naming the bad field.

A single event that is invalid makes the whole body invalid (422); in a batch each invalid
event becomes an :class:`EventError`, answered ``rejected``, and the others go ahead.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from leadscore_api.errors import InvalidInput, describe_validation, summarise
from leadscore_api.ingest.events import CanonicalEvent
from leadscore_api.ingest.storable import printable_id


@dataclass
class EventError:
    """An item that could not be turned into a canonical event; it is answered ``rejected``."""

    id: str | None
    error: str
    type: str | None = None


IngestItem = CanonicalEvent | EventError


def parse_event(data: object) -> IngestItem:
    """A canonical event, or an ``EventError`` whose message names the bad field(s)."""
    event_id = data.get("id") if isinstance(data, dict) else None
    event_type = data.get("type") if isinstance(data, dict) else None
    safe_id = printable_id(event_id)
    safe_type = printable_id(event_type)
    if not isinstance(data, dict):
        return EventError(safe_id, "event: must be a JSON object")
    try:
        return CanonicalEvent.model_validate(data)
    except ValidationError as exc:
        errors = describe_validation(exc.errors(), default="event", from_request=False)
        return EventError(safe_id, summarise(errors), safe_type)


def parse_body(body: object, max_batch_size: int) -> tuple[list[IngestItem], bool]:
    """Items to ingest from a request body, and whether it was a batch.

    Raises ``InvalidInput`` when the body is neither an event nor ``{"events": [...]}``.
    """
    if not isinstance(body, dict):
        raise InvalidInput.field("body", 'must be an event object or {"events": [...]}')
    if "events" in body and "id" not in body:
        extra = sorted(set(body) - {"events"})
        if extra:
            raise InvalidInput.fields(
                [{"field": name, "message": "is not allowed next to events"} for name in extra]
            )
        events = body["events"]
        if not isinstance(events, list):
            raise InvalidInput.field("events", "must be a list of events")
        if len(events) > max_batch_size:
            raise InvalidInput.field(
                "events", f"has {len(events)} events; at most {max_batch_size} per request"
            )
        return [parse_event(item) for item in events], True
    try:
        return [CanonicalEvent.model_validate(body)], False
    except ValidationError as exc:
        errors = describe_validation(exc.errors(), default="event", from_request=False)
        raise InvalidInput.fields(errors) from None
