"""Fixtures of the delivery tests: a migrated database, a loopback receiver, subscriptions."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker
from tests.receiver import Receiver, receiving

from leadscore_api.delivery.signer import generate_secret
from leadscore_api.delivery.worker import DeliveryWorker, WorkerOptions
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.db import make_engine, make_session_factory
from leadscore_api.storage.delivery_models import OutboxMessage, Subscription
from leadscore_api.storage.ids import new_id
from leadscore_api.storage.migrate import upgrade_database


@pytest.fixture
def db(database_url: str) -> Iterator[sessionmaker[Session]]:
    """A session factory on a freshly migrated database (SQLite, and PostgreSQL when set)."""
    upgrade_database(database_url)
    engine = make_engine(database_url)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


def add_subscription(
    factory: sessionmaker[Session],
    url: str,
    *,
    event_types: list[str] | None = None,
    filters: dict[str, Any] | None = None,
    secret: str | None = None,
) -> Subscription:
    with factory() as session:
        now = utcnow()
        sub = Subscription(
            id=new_id("sub"),
            url=url,
            event_types=event_types or ["*"],
            filters=filters or {},
            secret=secret or generate_secret(),
            enabled=True,
            created_at=now,
            updated_at=now,
        )
        session.add(sub)
        session.commit()
        return sub


def add_messages(factory: sessionmaker[Session], subscription_id: str, count: int = 1) -> list[str]:
    """Queue ``count`` messages directly (what enqueue_transitions does, minus the matching)."""
    ids = []
    with factory() as session:
        now = utcnow()
        for n in range(count):
            message_id = new_id("msg")
            session.add(
                OutboxMessage(
                    id=message_id,
                    subscription_id=subscription_id,
                    event_type="lead.mql",
                    lead_id=f"lead_{n}",
                    payload={
                        "type": "lead.mql",
                        "timestamp": now.isoformat(),
                        "data": {"lead": {"id": f"lead_{n}"}, "n": n},
                    },
                    next_attempt_at=now,
                    created_at=now,
                )
            )
            ids.append(message_id)
        session.commit()
    return ids


def make_worker(factory: sessionmaker[Session], **options: Any) -> DeliveryWorker:
    values: dict[str, Any] = {
        "allow_private_targets": True,
        "retry_delays": (0.0, 0.1, 0.2, 0.3, 0.4),
        "timeout_seconds": 2.0,
        "poll_seconds": 0.05,
    }
    values.update(options)
    return DeliveryWorker(factory, WorkerOptions(**values))


def drive(worker: DeliveryWorker, until: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Run delivery rounds until ``until()`` holds or ``timeout`` passes (bounded)."""

    async def loop() -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if until():
                return True
            if await worker.run_once() == 0:
                await asyncio.sleep(0.02)
        return until()

    return asyncio.run(loop())


def message(factory: sessionmaker[Session], message_id: str) -> OutboxMessage:
    with factory() as session:
        found = session.get(OutboxMessage, message_id)
        assert found is not None
        return found


BIG_MANUFACTURER = {
    "role": "purchasing manager",
    "employees": 250,
    "industry": "manufacturing",
    "annual_revenue_eur": 5_000_000,
}
_counter = itertools.count(1)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def qualified_stream(email: str) -> list[dict[str, Any]]:
    """Canonical events that make a big manufacturer's purchasing manager an A MQL (or more)."""
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    kinds: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        ("form.submitted", {}, BIG_MANUFACTURER),
        ("page.viewed", {"url": "https://x.it/pricing"}, {}),
        ("content.downloaded", {"title": "guide"}, {}),
        ("newsletter.subscribed", {}, {}),
        ("webinar.attended", {}, {}),
        ("email.opened", {}, {}),
        ("demo.requested", {}, {}),
    ]
    return [
        {
            "id": f"evt-dlv-{next(_counter)}",
            "type": kind,
            "occurred_at": (base + timedelta(minutes=10 * n)).isoformat(),
            "lead": {"email": email},
            "source": "website",
            "properties": properties,
            "attributes": attributes,
        }
        for n, (kind, properties, attributes) in enumerate(kinds)
    ]
