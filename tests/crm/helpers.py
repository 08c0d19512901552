"""What the framework tests and the end-to-end tests share: connector bodies, events, rounds."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.crm.base import Connector, ConnectorConfig, MemoryTokenCache, TokenCache
from leadscore_api.delivery.crm import CrmDispatcher, CrmOptions
from leadscore_api.storage.crm_models import CrmRecord
from leadscore_api.storage.delivery_models import OutboxMessage

_ids = itertools.count(1)

BIG_MANUFACTURER = {
    "role": "purchasing manager",
    "employees": 250,
    "industry": "manufacturing",
    "annual_revenue_eur": 5_000_000,
}


class StandIn(Protocol):
    """The interface every CRM stand-in exposes (tests/crm/standins/<kind>.py)."""

    base_url: str

    @property
    def log(self) -> Any: ...

    def connector_config(self, name: str = ..., **overrides: Any) -> ConnectorConfig: ...

    def person(self, email: str) -> dict[str, Any] | None: ...

    def tasks(self) -> list[dict[str, Any]]: ...

    def outcome_notification(
        self, email: str, outcome: Any, url: str
    ) -> tuple[str, dict[str, str], bytes]: ...

    def fail_next(self, status: int, times: int = 1, **details: Any) -> None: ...


class Resettable(Protocol):
    def reset(self) -> None: ...


class Configures(Protocol):
    def connector_config(self, name: str = ..., **overrides: Any) -> ConnectorConfig: ...


S = TypeVar("S", bound=Resettable)
C = TypeVar("C", bound=Connector)
C_co = TypeVar("C_co", bound=Connector, covariant=True)
T = TypeVar("T")


def standin_fixtures(
    start: Callable[[], AbstractContextManager[S]], name: str
) -> tuple[Callable[[], Iterator[S]], Callable[[S], S]]:
    """A connector test module's two fixtures: ``served``, its CRM's stand-in started once for
    the module (starting uvicorn per test would cost more than the tests themselves), and
    ``name``, the same stand-in reset to a fresh account for each test.

    Use as ``served, hubspot = standin_fixtures(running, "hubspot")`` at module level, with
    ``running`` from the CRM's module in ``tests/crm/standins``.
    """

    @pytest.fixture(scope="module", name="served")
    def served() -> Iterator[S]:
        with start() as standin:
            yield standin

    @pytest.fixture(name=name)
    def fresh(served: S) -> S:
        served.reset()
        return served

    return served, fresh


class ConnectorRun(Protocol[C_co]):
    def __call__(
        self,
        standin: Configures,
        action: Callable[[C_co], Awaitable[T]],
        tokens: TokenCache | None = None,
        *,
        config: ConnectorConfig | None = None,
        **overrides: Any,
    ) -> T: ...


def connector_runner(
    connector: Callable[[ConnectorConfig, httpx.AsyncClient, TokenCache], C],
) -> ConnectorRun[C]:
    """A test module's ``run(standin, action, tokens=None, *, config=None, **overrides)``:
    ``action`` on a connector with a fresh event loop and HTTP client, as the outbox worker
    runs one. The connector's config is ``config``, else the stand-in's with ``overrides``;
    its tokens start empty unless a test hands its cache in (to share it between runs)."""

    def run(
        standin: Configures,
        action: Callable[[C], Awaitable[T]],
        tokens: TokenCache | None = None,
        *,
        config: ConnectorConfig | None = None,
        **overrides: Any,
    ) -> T:
        chosen = config or standin.connector_config(**overrides)

        async def main() -> T:
            async with httpx.AsyncClient(timeout=10) as http:
                return await action(connector(chosen, http, tokens or MemoryTokenCache()))

        return asyncio.run(main())

    return run


def running(kind: str, **options: Any) -> AbstractContextManager[Any]:
    """``tests.crm.standins.<kind>.running``: the stand-in of that CRM on loopback."""
    module = importlib.import_module(f"tests.crm.standins.{kind}")
    factory: Callable[..., AbstractContextManager[Any]] = module.running
    return factory(**options)


def connector_body(standin: Any, name: str, **overrides: Any) -> dict[str, Any]:
    """The stand-in's connector config as the JSON of ``POST /v1/crm/connectors``."""
    config: ConnectorConfig = standin.connector_config(name)
    body = {
        field.name: getattr(config, field.name) for field in dataclasses.fields(ConnectorConfig)
    }
    for key in ("credentials", "field_map", "owner_map", "options"):
        body[key] = dict(body[key])
    body.update(overrides)
    return body


def event(
    email: str,
    type_: str,
    *,
    minutes_ago: float = 60,
    properties: dict[str, Any] | None = None,
    attributes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=minutes_ago)
    return {
        "id": f"evt-crm-{next(_ids)}",
        "type": type_,
        "occurred_at": at.isoformat(),
        "lead": {"email": email},
        "source": "website",
        "properties": properties or {},
        "attributes": attributes or {},
    }


def new_lead_events(email: str) -> list[dict[str, Any]]:
    """A first visit: a new, cold lead."""
    return [event(email, "page.viewed", minutes_ago=180, properties={"url": "https://x.it/blog"})]


def sql_events(email: str) -> list[dict[str, Any]]:
    """What makes a big manufacturer's purchasing manager an A, hot, SQL lead."""
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
        event(email, kind, minutes_ago=170 - 10 * n, properties=props, attributes=attrs)
        for n, (kind, props, attrs) in enumerate(kinds)
    ]


def dispatcher(factory: sessionmaker[Session], **options: Any) -> CrmDispatcher:
    values: dict[str, Any] = {
        "allow_private_targets": True,
        "retry_delays": (0.0, 0.05, 0.1, 0.2),
        "timeout_seconds": 5.0,
        "poll_seconds": 0.05,
        "wake_on_commit": False,
    }
    values.update(options)
    return CrmDispatcher(factory, CrmOptions(**values))


def run_round(crm: CrmDispatcher) -> int:
    return asyncio.run(crm.run_once())


def drain(crm: CrmDispatcher, until: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Rounds until ``until()`` holds (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if until():
            return True
        if run_round(crm) == 0:
            time.sleep(0.05)
    return until()


def messages(factory: sessionmaker[Session], type_: str | None = None) -> list[OutboxMessage]:
    with factory() as session:
        query = select(OutboxMessage).order_by(OutboxMessage.created_at, OutboxMessage.id)
        if type_ is not None:
            query = query.where(OutboxMessage.event_type == type_)
        return list(session.scalars(query))


def records(factory: sessionmaker[Session]) -> list[tuple[str, str, str, str]]:
    with factory() as session:
        rows = session.scalars(select(CrmRecord).order_by(CrmRecord.lead_id))
        return [(r.connector, r.lead_id, r.object_type, r.record_id) for r in rows]


def make_all_due(factory: sessionmaker[Session]) -> None:
    """Skip the wait of every pending message (a test does not sit out a retry delay)."""
    from sqlalchemy import update

    with factory() as session:
        session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.status == "pending")
            .values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        session.commit()
