"""Builders for canonical events used across the API tests."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

_counter = itertools.count(1)

#: A recent base time, so that decay does not wipe behaviour points out.
BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)

BIG_MANUFACTURER = {
    "role": "purchasing manager",
    "employees": 250,
    "industry": "manufacturing",
    "annual_revenue_eur": 5_000_000,
}


def at(minutes: float = 0) -> str:
    return (BASE + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def event(
    event_type: str = "page.viewed",
    *,
    id: str | None = None,
    minutes: float = 0,
    email: str | None = "anna.rossi@metalpro.it",
    external_id: str | None = None,
    properties: dict[str, Any] | None = None,
    attributes: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    lead: dict[str, Any] = {}
    if email is not None:
        lead["email"] = email
    if external_id is not None:
        lead["external_id"] = external_id
    body: dict[str, Any] = {
        "id": id or f"evt-{next(_counter)}",
        "type": event_type,
        "occurred_at": at(minutes),
        "lead": lead,
        "source": "website",
        "properties": properties or {},
        "attributes": attributes or {},
    }
    body.update(extra)
    return body


def qualified_stream(email: str = "anna.rossi@metalpro.it") -> list[dict[str, Any]]:
    """A big manufacturer's purchasing manager who reads pricing, a white paper, a webinar."""
    return [
        event("form.submitted", minutes=0, email=email, attributes=BIG_MANUFACTURER),
        event("page.viewed", minutes=10, email=email, properties={"url": "https://x.it/pricing"}),
        event("content.downloaded", minutes=20, email=email, properties={"title": "guide"}),
        event("newsletter.subscribed", minutes=30, email=email),
        event("webinar.attended", minutes=40, email=email),
        event("email.opened", minutes=50, email=email),
        event("demo.requested", minutes=60, email=email),
    ]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def run_as_distributed(app: Any) -> None:
    """Have ``app`` run the statements it runs on a distributed database (Citus), on any
    database: each lead locked and each bulk row written in a statement of its own
    (``storage/distribution.is_distributed``)."""
    from leadscore_api.storage.distribution import DISTRIBUTED_OPTION

    for factory in (app.state.session_factory, app.state.read_session_factory):
        factory.configure(bind=factory.kw["bind"].execution_options(**{DISTRIBUTED_OPTION: True}))
