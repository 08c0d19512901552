"""SQL of the outbox: ``outbox_messages`` and ``delivery_attempts``.

Messages are added in the transaction that changed the lead, so they commit or roll back with
it. Workers lease due messages with a claim token (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so
several workers never send one message at once. After a commit that added messages, in-process
workers are nudged (:func:`wake_after_commit`); that is only a hint to deliver sooner than the
next poll, and workers in other processes find the rows by polling.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, event, func, select, update
from sqlalchemy.orm import Session

from leadscore_api.storage.delivery_models import (
    STATUS_PENDING,
    DeliveryAttempt,
    OutboxMessage,
    Subscription,
)

_wake_lock = threading.Lock()
_wake_listeners: list[Callable[[], None]] = []
_WAKE_FLAG = "leadscore_outbox_wake"


def add_wake_listener(listener: Callable[[], None]) -> None:
    """Register a callable run after a commit that added messages (an in-process worker)."""
    with _wake_lock:
        _wake_listeners.append(listener)


def remove_wake_listener(listener: Callable[[], None]) -> None:
    with _wake_lock:
        if listener in _wake_listeners:
            _wake_listeners.remove(listener)


def _wake(session: Session) -> None:
    session.info.pop(_WAKE_FLAG, None)
    with _wake_lock:
        listeners = list(_wake_listeners)
    for listener in listeners:
        listener()


def wake_after_commit(session: Session) -> None:
    """Nudge in-process workers once ``session`` commits (not before: the rows must be visible)."""
    if session.info.get(_WAKE_FLAG):
        return
    session.info[_WAKE_FLAG] = True
    event.listen(session, "after_commit", _wake, once=True)


# -- writing ---------------------------------------------------------------------------------


def add_messages(session: Session, messages: Sequence[OutboxMessage]) -> None:
    if messages:
        session.add_all(messages)
        wake_after_commit(session)


def delete_for_lead(session: Session, lead_id: str) -> int:
    """Every message (and its attempts) about a lead; returns how many messages went."""
    ids = select(OutboxMessage.id).where(OutboxMessage.lead_id == lead_id)
    session.execute(delete(DeliveryAttempt).where(DeliveryAttempt.message_id.in_(ids)))
    result = session.execute(delete(OutboxMessage).where(OutboxMessage.lead_id == lead_id))
    return int(getattr(result, "rowcount", 0) or 0)


def pending_for_lead(session: Session, lead_id: str) -> list[OutboxMessage]:
    """The messages about a lead not yet delivered nor given up (locked on PostgreSQL)."""
    query = select(OutboxMessage).where(
        OutboxMessage.lead_id == lead_id, OutboxMessage.status == STATUS_PENDING
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    return list(session.scalars(query.order_by(OutboxMessage.id)))


def pending_stats(session: Session, now: datetime) -> tuple[int, datetime | None]:
    """How many messages are pending, and the due time of the oldest one due by ``now``.

    Both read the (status, next_attempt_at) index. A message being sent has its due time
    pushed past the send deadline (its lease), so it is not counted as late.
    """
    depth = session.scalar(select(func.count()).where(OutboxMessage.status == STATUS_PENDING))
    oldest = session.scalar(
        select(func.min(OutboxMessage.next_attempt_at)).where(
            OutboxMessage.status == STATUS_PENDING, OutboxMessage.next_attempt_at <= now
        )
    )
    return int(depth or 0), oldest


def requeue_values(now: datetime) -> dict[str, Any]:
    """A message made due now with a fresh schedule (same ``webhook-id``)."""
    return {
        "status": STATUS_PENDING,
        "next_attempt_at": now,
        "claim_token": None,
        "schedule_attempts": 0,
    }


def requeue(session: Session, message: OutboxMessage, now: datetime) -> None:
    for name, value in requeue_values(now).items():
        setattr(message, name, value)
    session.flush()
    wake_after_commit(session)


def replay(
    session: Session,
    *,
    since: datetime,
    until: datetime | None,
    subscription_id: str | None,
    statuses: Sequence[str],
    now: datetime,
) -> tuple[int, list[str]]:
    """Requeue every matching message; also return the disabled subscriptions holding some."""
    conditions: list[ColumnElement[bool]] = [
        OutboxMessage.created_at >= since,
        OutboxMessage.status.in_(list(statuses)),
    ]
    if until is not None:
        conditions.append(OutboxMessage.created_at < until)
    if subscription_id is not None:
        conditions.append(OutboxMessage.subscription_id == subscription_id)
    disabled = list(
        session.scalars(
            select(Subscription.id)
            .where(Subscription.enabled.is_(False))
            .where(Subscription.id.in_(select(OutboxMessage.subscription_id).where(*conditions)))
        )
    )
    result = session.execute(
        update(OutboxMessage)
        .where(*conditions)
        .values(**requeue_values(now))
        .execution_options(synchronize_session=False)
    )
    count = int(getattr(result, "rowcount", 0) or 0)
    if count:
        wake_after_commit(session)
    return count, sorted(disabled)


# -- reading ---------------------------------------------------------------------------------


def get(session: Session, message_id: str) -> OutboxMessage | None:
    return session.get(OutboxMessage, message_id)


def list_messages(
    session: Session,
    *,
    subscription_id: str | None,
    status: str | None,
    event_type: str | None,
    lead_id: str | None,
    since: datetime | None,
    until: datetime | None,
    before_id: str | None,
    limit: int,
) -> list[OutboxMessage]:
    """Newest first (ids sort by creation time), up to ``limit``."""
    query = select(OutboxMessage).order_by(OutboxMessage.id.desc()).limit(limit)
    if subscription_id is not None:
        query = query.where(OutboxMessage.subscription_id == subscription_id)
    if status is not None:
        query = query.where(OutboxMessage.status == status)
    if event_type is not None:
        query = query.where(OutboxMessage.event_type == event_type)
    if lead_id is not None:
        query = query.where(OutboxMessage.lead_id == lead_id)
    if since is not None:
        query = query.where(OutboxMessage.created_at >= since)
    if until is not None:
        query = query.where(OutboxMessage.created_at < until)
    if before_id is not None:
        query = query.where(OutboxMessage.id < before_id)
    return list(session.scalars(query))


def attempts(session: Session, message_id: str) -> list[DeliveryAttempt]:
    query = (
        select(DeliveryAttempt)
        .where(DeliveryAttempt.message_id == message_id)
        .order_by(DeliveryAttempt.id)
    )
    return list(session.scalars(query))


# -- the worker's side -----------------------------------------------------------------------


def claim_due(
    session: Session, *, now: datetime, limit: int, token: str, lease_until: datetime
) -> list[tuple[str, dict[str, Any], Subscription]]:
    """Lease up to ``limit`` due messages of enabled subscriptions to ``token``.

    Returns (message id, payload, subscription) of each leased message. ``crm.*`` messages are
    not webhooks: the CRM dispatcher (``delivery/crm.py``) claims those.
    """
    query = (
        select(OutboxMessage.id)
        .join(Subscription, Subscription.id == OutboxMessage.subscription_id)
        .where(
            OutboxMessage.status == STATUS_PENDING,
            OutboxMessage.next_attempt_at <= now,
            OutboxMessage.event_type.not_like("crm.%"),
            Subscription.enabled.is_(True),
        )
        .order_by(OutboxMessage.next_attempt_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True, of=OutboxMessage)
    ids = list(session.scalars(query))
    if not ids:
        return []
    session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.id.in_(ids),
            OutboxMessage.status == STATUS_PENDING,
            OutboxMessage.next_attempt_at <= now,
        )
        .values(claim_token=token, next_attempt_at=lease_until)
        .execution_options(synchronize_session=False)
    )
    rows = session.execute(
        select(OutboxMessage.id, OutboxMessage.payload, Subscription)
        .join(Subscription, Subscription.id == OutboxMessage.subscription_id)
        .where(OutboxMessage.claim_token == token)
    ).all()
    return [(message_id, payload, sub) for message_id, payload, sub in rows]


def by_ids(session: Session, ids: Sequence[str]) -> dict[str, OutboxMessage]:
    found = session.scalars(select(OutboxMessage).where(OutboxMessage.id.in_(list(ids))))
    return {message.id: message for message in found}


def add_attempt(session: Session, attempt: DeliveryAttempt) -> None:
    session.add(attempt)
