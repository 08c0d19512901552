"""The delivery worker against a real loopback receiver and a real database."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook
from tests.receiver import Receiver, Reply

from leadscore_api.delivery.signer import generate_secret
from leadscore_api.delivery.worker import Claimed, DeliveryWorker
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.delivery_models import DeliveryAttempt, OutboxMessage, Subscription

from .conftest import add_messages, add_subscription, drive, make_worker, message


def _sub(factory: sessionmaker[Session], sub_id: str) -> Subscription:
    with factory() as session:
        sub = session.get(Subscription, sub_id)
        assert sub is not None
        return sub


def _attempts(factory: sessionmaker[Session], message_id: str) -> list[DeliveryAttempt]:
    with factory() as session:
        query = select(DeliveryAttempt).where(DeliveryAttempt.message_id == message_id)
        return list(session.scalars(query.order_by(DeliveryAttempt.id)))


def test_delivered_message_is_signed_as_standard_webhooks_says(
    db: sessionmaker[Session], receiver: Receiver
) -> None:
    sub = add_subscription(db, receiver.url)
    [msg_id] = add_messages(db, sub.id)
    worker = make_worker(db)
    assert drive(worker, lambda: len(receiver.requests) == 1)
    got = receiver.requests[0]
    assert got.headers["webhook-id"] == msg_id
    assert got.headers["content-type"] == "application/json"
    payload = Webhook(sub.secret).verify(got.body, got.headers)
    assert payload["type"] == "lead.mql"
    stored = message(db, msg_id)
    assert stored.status == "delivered" and stored.attempts == 1 and stored.last_status == 200
    [attempt] = _attempts(db, msg_id)
    assert attempt.success and attempt.status_code == 200 and attempt.response_body == "ok"


def test_fails_twice_then_gets_it_once_recovered(
    db: sessionmaker[Session], receiver: Receiver
) -> None:
    sub = add_subscription(db, receiver.url)
    [msg_id] = add_messages(db, sub.id)
    receiver.plan(Reply(500, body=b"boom"), Reply(503))
    worker = make_worker(db)
    assert drive(worker, lambda: message(db, msg_id).status == "delivered")
    requests = receiver.requests
    assert [r.status for r in requests] == [500, 503, 200]
    assert {r.webhook_id for r in requests} == {msg_id}
    for r in requests:  # every attempt is signed with its own timestamp
        Webhook(sub.secret).verify(r.body, r.headers)
    attempts = _attempts(db, msg_id)
    assert [a.status_code for a in attempts] == [500, 503, 200]
    assert attempts[0].response_body == "boom"
    assert message(db, msg_id).attempts == 3
    assert _sub(db, sub.id).failing_since is None


def test_schedule_exhausted_marks_failed(db: sessionmaker[Session], receiver: Receiver) -> None:
    sub = add_subscription(db, receiver.url)
    [msg_id] = add_messages(db, sub.id)
    receiver.default = Reply(500)
    worker = make_worker(db, retry_delays=(0.0, 0.05, 0.1))
    assert drive(worker, lambda: message(db, msg_id).status == "failed")
    stored = message(db, msg_id)
    assert stored.attempts == 3 and stored.next_attempt_at is None
    assert stored.last_error == "HTTP 500"
    assert len(receiver.requests) == 3


def test_410_disables_the_endpoint(db: sessionmaker[Session], receiver: Receiver) -> None:
    sub = add_subscription(db, receiver.url)
    first, second = add_messages(db, sub.id, 2)
    receiver.default = Reply(410)
    worker = make_worker(db, batch_size=1)
    assert drive(worker, lambda: not _sub(db, sub.id).enabled)
    disabled = _sub(db, sub.id)
    assert disabled.disabled_reason is not None and "410" in disabled.disabled_reason
    # Nothing more is sent to a disabled endpoint; its messages wait, not lost.
    asyncio.run(worker.run_once())
    assert len(receiver.requests) == 1
    assert {message(db, first).status, message(db, second).status} == {"pending"}


def test_slow_receiver_times_out_and_is_retried(
    db: sessionmaker[Session], receiver: Receiver
) -> None:
    sub = add_subscription(db, receiver.url)
    [msg_id] = add_messages(db, sub.id)
    receiver.plan(Reply(200, delay=1.5))
    worker = make_worker(db, timeout_seconds=0.3)
    assert drive(worker, lambda: message(db, msg_id).status == "delivered")
    attempts = _attempts(db, msg_id)
    assert len(attempts) == 2
    assert attempts[0].error is not None and "timed out" in attempts[0].error
    assert attempts[0].status_code is None and 250 <= attempts[0].duration_ms < 1200
    assert attempts[1].success


def test_retry_after_is_honoured(db: sessionmaker[Session], receiver: Receiver) -> None:
    sub = add_subscription(db, receiver.url)
    [msg_id] = add_messages(db, sub.id)
    receiver.plan(Reply(429, headers={"Retry-After": "30"}))
    worker = make_worker(db)
    before = utcnow()
    asyncio.run(worker.run_once())
    stored = message(db, msg_id)
    assert stored.status == "pending" and stored.last_status == 429
    assert stored.next_attempt_at is not None
    assert stored.next_attempt_at >= before + timedelta(seconds=29)


def test_redirects_are_not_followed(db: sessionmaker[Session], receiver: Receiver) -> None:
    sub = add_subscription(db, receiver.url)
    [msg_id] = add_messages(db, sub.id)
    receiver.plan(Reply(302, headers={"Location": receiver.url + "/elsewhere"}))
    asyncio.run(make_worker(db).run_once())
    assert len(receiver.requests) == 1
    stored = message(db, msg_id)
    assert stored.status == "pending" and stored.last_status == 302


def test_private_target_refused_at_send_time(db: sessionmaker[Session], receiver: Receiver) -> None:
    sub = add_subscription(db, receiver.url)
    [msg_id] = add_messages(db, sub.id)
    asyncio.run(make_worker(db, allow_private_targets=False).run_once())
    assert receiver.requests == []
    [attempt] = _attempts(db, msg_id)
    assert attempt.error is not None and "target refused" in attempt.error
    assert "loopback" in attempt.error


def test_endpoint_failing_for_days_is_disabled(
    db: sessionmaker[Session], receiver: Receiver
) -> None:
    sub = add_subscription(db, receiver.url)
    add_messages(db, sub.id)
    with db() as session:
        session.execute(
            update(Subscription)
            .where(Subscription.id == sub.id)
            .values(failing_since=utcnow() - timedelta(days=6))
        )
        session.commit()
    receiver.default = Reply(500)
    asyncio.run(make_worker(db, disable_after_days=5).run_once())
    disabled = _sub(db, sub.id)
    assert not disabled.enabled
    assert disabled.disabled_reason is not None and "failed since" in disabled.disabled_reason


def test_rotation_overlap_signs_with_both_secrets(
    db: sessionmaker[Session], receiver: Receiver
) -> None:
    old, new = generate_secret(), generate_secret()
    sub = add_subscription(db, receiver.url, secret=new)
    with db() as session:
        session.execute(
            update(Subscription)
            .where(Subscription.id == sub.id)
            .values(previous_secret=old, previous_secret_expires_at=utcnow() + timedelta(hours=1))
        )
        session.commit()
    add_messages(db, sub.id)
    assert drive(make_worker(db), lambda: len(receiver.requests) == 1)
    got = receiver.requests[0]
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(got.body, got.headers)
    Webhook(new).verify(got.body, got.headers)


def test_body_is_identical_on_every_attempt(db: sessionmaker[Session], receiver: Receiver) -> None:
    sub = add_subscription(db, receiver.url)
    [msg_id] = add_messages(db, sub.id)
    receiver.plan(Reply(500))
    assert drive(make_worker(db), lambda: message(db, msg_id).status == "delivered")
    bodies = {r.body for r in receiver.requests}
    assert len(bodies) == 1
    assert json.loads(bodies.pop())["data"]["n"] == 0


def test_crashed_worker_rows_are_sent_after_the_lease(
    db: sessionmaker[Session], receiver: Receiver
) -> None:
    """A worker that claims and dies: its rows go out later, same webhook-id (at least once)."""
    sub = add_subscription(db, receiver.url)
    ids = add_messages(db, sub.id, 3)
    dead = make_worker(db, timeout_seconds=0.2, lease_margin_seconds=0.3)
    claimed = dead.claim()
    assert {c.message_id for c in claimed} == set(ids)
    survivor = make_worker(db)
    assert asyncio.run(survivor.run_once()) == 0  # leased: not sent twice at once
    assert drive(survivor, lambda: len(receiver.delivered()) == 3, timeout=10)
    assert sorted(r.webhook_id for r in receiver.delivered()) == sorted(ids)


def test_run_loop_stops_and_wakes(db: sessionmaker[Session], receiver: Receiver) -> None:
    sub = add_subscription(db, receiver.url)
    add_messages(db, sub.id, 5)
    worker = make_worker(db, poll_seconds=5.0)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        await asyncio.to_thread(receiver.wait_for, 5, 10.0)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert len(receiver.delivered()) == 5


def test_pending_rows_wait_for_their_time(db: sessionmaker[Session], receiver: Receiver) -> None:
    sub = add_subscription(db, receiver.url)
    [msg_id] = add_messages(db, sub.id)
    with db() as session:
        session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == msg_id)
            .values(next_attempt_at=utcnow() + timedelta(hours=1))
        )
        session.commit()
    assert asyncio.run(make_worker(db).run_once()) == 0
    assert receiver.requests == []


def test_two_workers_on_postgres_send_each_message_exactly_once(
    pg_url: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers with their own engines, concurrently: disjoint claims, one send each."""
    from leadscore_api.storage.db import make_engine, make_session_factory
    from leadscore_api.storage.migrate import upgrade_database

    upgrade_database(pg_url)
    engines = [make_engine(pg_url) for _ in range(2)]
    try:
        factories = [make_session_factory(e) for e in engines]
        sub = add_subscription(factories[0], receiver.url)
        ids = add_messages(factories[0], sub.id, 400)
        receiver.default = Reply(200, delay=0.005)
        workers = [make_worker(f, batch_size=20, concurrency=8) for f in factories]
        claimed: list[list[str]] = [[], []]

        def record_claims(worker: DeliveryWorker, seen: list[str]) -> None:
            original = worker.claim

            def recording_claim(limit: int | None = None) -> list[Claimed]:
                batch = original(limit)
                seen.extend(c.message_id for c in batch)
                return batch

            monkeypatch.setattr(worker, "claim", recording_claim)

        for worker, seen in zip(workers, claimed, strict=True):
            record_claims(worker, seen)

        def run(index: int) -> None:
            drive(workers[index], lambda: len(receiver.delivered()) >= len(ids), timeout=60)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=90)
        received = [r.webhook_id for r in receiver.requests]
        assert sorted(received) == sorted(ids)  # each exactly once
        assert not set(claimed[0]) & set(claimed[1])
        assert claimed[0] and claimed[1]  # both took part
        with factories[0]() as session:
            statuses = set(session.scalars(select(OutboxMessage.status)))
        assert statuses == {"delivered"}
    finally:
        for e in engines:
            e.dispose()
