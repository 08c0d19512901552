"""Group commit: concurrent ingest requests share transactions, never each other's failures."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from tests.api.helpers import BIG_MANUFACTURER, event

from leadscore_api.ingest.parsing import IngestItem, parse_body
from leadscore_api.service.group_commit import GroupCommitter
from leadscore_api.service.ingestion import EventResult, ingest_events
from leadscore_api.service.rulesets import RulesetRegistry
from leadscore_api.storage.models import Event


def _items(*events: dict[str, object]) -> list[IngestItem]:
    body = {"events": list(events)} if len(events) > 1 else events[0]
    items, _ = parse_body(body, 1000)
    return items


def _stored(factory: sessionmaker[Session], event_id: str) -> bool:
    with factory() as session:
        return session.scalar(select(Event.id).where(Event.id == event_id)) is not None


def _count(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(Event)) or 0


def _committer(app: FastAPI, **kwargs: object) -> GroupCommitter:
    return GroupCommitter(app.state.session_factory, app.state.registry, **kwargs)  # type: ignore[arg-type]


def test_concurrent_requests_share_transactions_and_are_committed_when_answered(
    app: FastAPI, client: TestClient
) -> None:
    factory: sessionmaker[Session] = app.state.read_session_factory
    committer = _committer(app)
    answered_and_stored: list[bool] = []

    async def one(n: int) -> list[EventResult]:
        results = await committer.submit(
            _items(event(id=f"gc-{n}", email=f"lead{n % 7}@gc.example", minutes=n))
        )
        # The answer comes after the commit: another connection sees the row already.
        answered_and_stored.append(_stored(factory, f"gc-{n}"))
        return results

    async def all_of_them() -> list[list[EventResult]]:
        return await asyncio.gather(*(one(n) for n in range(30)))

    try:
        answers = asyncio.run(all_of_them())
    finally:
        committer.close()
    assert [r[0].status for r in answers] == ["accepted"] * 30
    assert [r[0].id for r in answers] == [f"gc-{n}" for n in range(30)]
    assert all(answered_and_stored)
    assert _count(factory) == 30
    assert committer.grouped_requests == 30
    assert committer.groups < 30, "waiting requests were not grouped"


def test_a_request_whose_transaction_fails_does_not_fail_the_others(
    app: FastAPI, client: TestClient
) -> None:
    def ingest(
        session: Session, registry: RulesetRegistry, items: Sequence[IngestItem]
    ) -> list[EventResult]:
        results = ingest_events(session, registry, items)
        if any(getattr(item, "id", None) == "poison" for item in items):
            raise RuntimeError("this request's data broke the transaction")
        return results

    factory: sessionmaker[Session] = app.state.read_session_factory
    committer = _committer(app, ingest=ingest)

    async def run() -> list[list[EventResult] | BaseException]:
        requests = [_items(event(id=f"ok-{n}", email=f"ok{n}@gc.example")) for n in range(10)]
        requests.insert(5, _items(event(id="poison", email="bad@gc.example")))
        return await asyncio.gather(
            *(committer.submit(items) for items in requests), return_exceptions=True
        )

    try:
        answers = asyncio.run(run())
    finally:
        committer.close()
    failed = [a for a in answers if isinstance(a, BaseException)]
    assert len(failed) == 1 and "broke the transaction" in str(failed[0])
    assert not _stored(factory, "poison")
    for n in range(10):
        assert _stored(factory, f"ok-{n}")
    assert _count(factory) == 10


def test_the_same_event_in_two_concurrent_requests_is_stored_once(
    app: FastAPI, client: TestClient
) -> None:
    committer = _committer(app)
    twin = event(id="twin-1", email="twin@gc.example", attributes=BIG_MANUFACTURER)

    async def run() -> tuple[list[EventResult], list[EventResult]]:
        return await asyncio.gather(committer.submit(_items(twin)), committer.submit(_items(twin)))

    try:
        first, second = asyncio.run(run())
    finally:
        committer.close()
    assert sorted([first[0].status, second[0].status]) == ["accepted", "duplicate"]
    assert first[0].lead_id == second[0].lead_id is not None
    assert _count(app.state.read_session_factory) == 1


def test_a_closed_committer_refuses_new_requests(app: FastAPI, client: TestClient) -> None:
    committer = _committer(app)
    committer.close()
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(committer.submit(_items(event(id="late"))))


def test_the_events_route_goes_through_the_apps_committer(app: FastAPI, client: TestClient) -> None:
    committer: GroupCommitter = app.state.ingest_writer
    before = committer.grouped_requests
    for n in range(3):
        response = client.post("/v1/events", json=event(id=f"route-{n}", minutes=n))
        assert response.status_code == 200, response.text
        assert response.json()["results"][0]["status"] == "accepted"
    assert committer.grouped_requests == before + 3
    assert _count(app.state.read_session_factory) == 3


def test_metrics_show_how_many_requests_shared_each_commit(client: TestClient) -> None:
    for n in range(2):
        assert client.post("/v1/events", json=event(id=f"metric-{n}")).status_code == 200
    text = client.get("/metrics").text
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("leadscore_ingest_")
    }
    assert values["leadscore_ingest_grouped_requests_total"] == 2
    assert 1 <= values["leadscore_ingest_groups_total"] <= 2


def test_a_second_writer_runs_a_batchs_worth_while_the_first_is_busy_but_no_single_events(
    app: FastAPI, client: TestClient
) -> None:
    held = threading.Event()
    release = threading.Event()

    def ingest(
        session: Session, registry: RulesetRegistry, items: Sequence[IngestItem]
    ) -> list[EventResult]:
        # Held before the transaction touches the database, so SQLite's write lock is free.
        if any(getattr(item, "id", None) == "slow" for item in items):
            held.set()
            assert release.wait(30)
        return ingest_events(session, registry, items)

    committer = _committer(app, writers=2, parallel_events=5, ingest=ingest)

    async def run() -> tuple[bool, bool, list[EventResult], list[EventResult], list[EventResult]]:
        slow = asyncio.ensure_future(committer.submit(_items(event(id="slow", email="s@gc.it"))))
        assert await asyncio.to_thread(held.wait, 30)
        single = asyncio.ensure_future(
            committer.submit(_items(event(id="single", email="one@gc.it", minutes=1)))
        )
        await asyncio.sleep(0.3)
        single_waited = not single.done()  # one event waiting: left to the busy first writer
        batch = await asyncio.wait_for(
            committer.submit(
                _items(*(event(id=f"b-{n}", email=f"b{n}@gc.it", minutes=n) for n in range(5)))
            ),
            30,
        )
        # Six events waiting: the second writer ran them, the first is still held.
        slow_was_held = not slow.done()
        release.set()
        return single_waited, slow_was_held, await single, batch, await slow

    try:
        single_waited, slow_was_held, single, batch, slow = asyncio.run(run())
    finally:
        release.set()
        committer.close()
    assert single_waited and slow_was_held
    assert [r.status for r in single + batch + slow] == ["accepted"] * 7
    assert _count(app.state.read_session_factory) == 7
    assert committer.groups == 2, "the single event and the batch shared the second writer's group"


def test_closing_finishes_what_every_writer_has_waiting(app: FastAPI, client: TestClient) -> None:
    committer = _committer(app, writers=3, parallel_events=2)

    async def run() -> list[list[EventResult]]:
        pending = [
            asyncio.ensure_future(
                committer.submit(_items(event(id=f"c-{n}", email=f"c{n}@gc.it", minutes=n)))
            )
            for n in range(12)
        ]
        await asyncio.sleep(0)  # every request queued
        await asyncio.to_thread(committer.close)
        return await asyncio.gather(*pending)

    answers = asyncio.run(run())
    assert [r[0].status for r in answers] == ["accepted"] * 12
    assert _count(app.state.read_session_factory) == 12
