"""What every platform adapter shares: the request it reads, its answer, and event building.

Adapters are pure functions of a ``WebhookRequest`` (no FastAPI, no SQL), so they are tested with
the platforms' documented payloads directly, and the router stays a thin layer that only reads
the HTTP request, stores the events and writes the answer.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from pydantic import ValidationError

from leadscore_api import json_codec
from leadscore_api.errors import describe_validation, summarise
from leadscore_api.ingest.events import CanonicalEvent
from leadscore_api.ingest.signatures import PayloadError
from leadscore_api.ingest.storable import printable_id

_TYPE_PART = re.compile(r"[^a-z0-9_]+")


@dataclass(frozen=True)
class WebhookRequest:
    """The parts of an inbound HTTP request an adapter may look at."""

    method: str
    url: str
    headers: Mapping[str, str]
    query: Mapping[str, str]
    body: bytes
    received_at: datetime

    @property
    def content_type(self) -> str:
        """The media type without parameters, lower-cased (``application/json``)."""
        for key, value in self.headers.items():
            if key.lower() == "content-type":
                return value.split(";", 1)[0].strip().lower()
        return ""


@dataclass(frozen=True)
class SourceConfig:
    """What an adapter needs from the settings: its secret and its optional extras."""

    secret: str | None
    tolerance_seconds: int = 300
    signed_url: str | None = None
    field_map: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AdapterError:
    """One item of a batch that could not become an event; the others still go through."""

    index: int
    error: str
    id: str | None = None


@dataclass(frozen=True)
class Ignored:
    """One item that describes no lead (a Mailchimp campaign, a Mandrill sync event): not stored."""

    index: int
    reason: str
    id: str | None = None


Item = CanonicalEvent | AdapterError | Ignored


@dataclass(frozen=True)
class Verified:
    """A request that passed authentication; ``replay_token`` is set where tokens are single-use."""

    replay_token: str | None = None


@dataclass(frozen=True)
class Adapter:
    """One platform: how to authenticate its requests and how to read their events."""

    name: str
    verify: Callable[[WebhookRequest, SourceConfig], Verified]
    parse: Callable[[WebhookRequest, SourceConfig], list[Item]]


def derive_id(source: str, *parts: Any) -> str:
    """A stable event id for platforms that send none: the source and a hash of what identifies it.

    The same delivery retried gives the same parts, hence the same id, hence ``duplicate``.
    """
    material = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return f"{source}:{hashlib.sha256(material.encode()).hexdigest()[:40]}"


def prefixed_id(source: str, platform_id: Any) -> str:
    """``source:platform_id``, hashed when the platform id is too long to store as is."""
    text = str(platform_id)
    candidate = f"{source}:{text}"
    if len(candidate) <= 200:
        return candidate
    return derive_id(source, text)


def type_for(source: str, platform_event: Any) -> str:
    """The stored type of a platform event we have no canonical name for: ``source.event``.

    Such events are stored (they are history) and score nothing, as unknown types do.
    """
    part = _TYPE_PART.sub("_", str(platform_event).strip().lower()).strip("_") or "unknown"
    if not part[0].isalpha():
        part = f"e_{part}"
    return f"{source}.{part}"


def unix_time(value: Any, what: str) -> datetime:
    """A Unix time in seconds (int, float or numeric string) as an aware UTC datetime."""
    try:
        seconds = float(value)
        return datetime.fromtimestamp(seconds, UTC)
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        raise ValueError(f"{what} is not a Unix time in seconds: {value!r}") from exc


def iso_time(value: Any, what: str, default_zone: Any = UTC) -> datetime:
    """An ISO 8601 / RFC 3339 time; a time without a zone is taken in ``default_zone``."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} is missing or not a date-time: {value!r}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"{what} is not an ISO 8601 date-time: {value!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=default_zone)
    return parsed.astimezone(UTC)


def categories(value: Any) -> list[str] | None:
    """A category/tag field (string, list, or missing) as a list of strings."""
    if value is None:
        return None
    if isinstance(value, list):
        items = [str(v) for v in value if v is not None and str(v) != ""]
        return items or None
    text = str(value)
    return [text] if text else None


def make_event(index: int, **values: Any) -> CanonicalEvent | AdapterError:
    """Build a canonical event, or an ``AdapterError`` that says which field is wrong.

    ``None`` properties are dropped so that stored events only carry what the platform sent.
    """
    properties = values.get("properties")
    if isinstance(properties, dict):
        values["properties"] = {k: v for k, v in properties.items() if v is not None}
    try:
        return CanonicalEvent.model_validate(values)
    except ValidationError as exc:
        problems = describe_validation(exc.errors(), default="event", from_request=False)
        return AdapterError(
            index=index, error=summarise(problems), id=printable_id(values.get("id"))
        )


def load_json(body: bytes) -> Any:
    """The body as JSON, or a ``PayloadError`` that says where it stops being JSON."""
    if not body.strip():
        raise PayloadError("the body is empty; a JSON document was expected")
    try:
        return json_codec.parse(body)
    except UnicodeDecodeError as exc:
        raise PayloadError("the body is not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise PayloadError(
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except ValueError as exc:  # NaN / Infinity
        raise PayloadError(f"the body is not valid JSON: {exc}") from exc


def load_form(body: bytes) -> list[tuple[str, str]]:
    """An ``application/x-www-form-urlencoded`` body as ordered (name, value) pairs."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError("the form body is not UTF-8 text") from exc
    try:
        return parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text.strip()))
    except ValueError as exc:
        raise PayloadError(f"the body is not a URL-encoded form: {exc}") from exc


def expect_object(value: Any, index: int, what: str) -> dict[str, Any] | AdapterError:
    """``value`` if it is a JSON object, else the error for that batch item."""
    if isinstance(value, dict):
        return value
    return AdapterError(index=index, error=f"{what} is not a JSON object")


def first(mapping: Mapping[str, Any], *keys: str) -> Any:
    """The first non-empty value among ``keys``."""
    for key in keys:
        value = mapping.get(key)
        if value is not None and value != "":
            return value
    return None


def nested(mapping: Any, *path: str) -> Any:
    """``mapping[a][b]...`` or None when any step is missing or not an object."""
    current = mapping
    for key in path:
        if not isinstance(current, dict):
            return None
        current = current.get(key)
    return current


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one (for optional nested objects)."""
    return value if isinstance(value, dict) else {}
