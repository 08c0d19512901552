"""Outbound webhooks as a domain: queueing transitions, subscriptions and their deliveries.

Transitions are queued in the transaction that changed the lead (:func:`enqueue_transitions`),
so a crash cannot lose one; the delivery worker (:mod:`leadscore_api.delivery.worker`) sends
them. Subscription URLs are checked by the SSRF guard here, when they are stored, and again by
the worker at each send (DNS may change in between).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.delivery.payloads import (
    LEAD_FIELDS,
    build_payload,
    ping_payload,
    subscription_matches,
)
from leadscore_api.delivery.signer import generate_secret
from leadscore_api.delivery.ssrf import UnsafeTargetError, validate_url
from leadscore_api.errors import Conflict, InvalidInput, NotFound
from leadscore_api.scoring import Transition
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.delivery_models import (
    MESSAGE_STATUSES,
    DeliveryAttempt,
    OutboxMessage,
    Subscription,
)
from leadscore_api.storage.ids import new_id
from leadscore_api.storage.repositories import outbox as outbox_repo
from leadscore_api.storage.repositories import subscriptions as subscriptions_repo
from leadscore_api.storage.repositories import timers as timers_repo
from leadscore_api.storage.unit_of_work import transactional


class UnsafeWebhookTarget(InvalidInput):
    problem_type = "unsafe-webhook-target"
    title = "Webhook URL refused"


class SubscriptionDisabled(Conflict):
    problem_type = "subscription-disabled"
    title = "Subscription disabled"


def lead_view(lead: object) -> dict[str, Any]:
    """The lead's fields that outbound payloads carry."""
    return {name: getattr(lead, name) for name in LEAD_FIELDS}


# -- queueing ----------------------------------------------------------------------------------


def enqueue_transitions(
    session: Session,
    *,
    lead: dict[str, Any],
    transitions: Sequence[Transition],
    event_id: str | None,
    ruleset_name: str,
    ruleset_version: int,
    explanation: dict[str, Any],
) -> int:
    """Add one outbox row per (transition, subscription that wants it); return how many.

    Call it inside the transaction that stores the lead's change; it does not commit. ``lead``
    is :func:`lead_view` of the lead; the filters compare its current letter and tier.
    """
    if not transitions:
        return 0
    subscriptions = subscriptions_repo.enabled(session)
    if not subscriptions:
        return 0
    now = utcnow()
    lead_id = lead.get("id")
    messages: list[OutboxMessage] = []
    for transition in transitions:
        targets = [
            sub
            for sub in subscriptions
            if subscription_matches(
                list(sub.event_types or []),
                dict(sub.filters or {}),
                transition.type,
                ruleset_name=ruleset_name,
                letter=lead.get("letter"),
                tier=lead.get("tier"),
            )
        ]
        if not targets:
            continue
        payload = build_payload(
            event_type=transition.type,
            at=transition.at,
            lead=lead,
            from_value=transition.from_value,
            to_value=transition.to_value,
            event_id=transition.event_id if transition.event_id is not None else event_id,
            ruleset_name=ruleset_name,
            ruleset_version=ruleset_version,
            explanation=explanation,
        )
        messages.extend(
            OutboxMessage(
                id=new_id("msg"),
                subscription_id=sub.id,
                event_type=transition.type,
                lead_id=None if lead_id is None else str(lead_id),
                event_id=payload["data"]["event_id"],
                payload=payload,
                next_attempt_at=now,
                created_at=now,
            )
            for sub in targets
        )
    outbox_repo.add_messages(session, messages)
    return len(messages)


def forget_lead(session: Session, lead_id: str) -> int:
    """GDPR erasure: drop every message (and its attempts) about the lead, and its timers.

    Payloads carry the person's email and ids, so nothing about them may stay queued or logged.
    Returns the number of messages removed.
    """
    removed = outbox_repo.delete_for_lead(session, lead_id)
    timers_repo.delete_for_lead(session, lead_id)
    return removed


def queue_stats(session_factory: sessionmaker[Session]) -> tuple[int, float]:
    """The outbound queue for /metrics: pending messages, and seconds the oldest due is late."""
    now = utcnow()
    with session_factory() as session:
        depth, oldest = outbox_repo.pending_stats(session, now)
    lag = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
    return depth, lag


def move_queued(session: Session, from_id: str, to_lead: dict[str, Any]) -> int:
    """A merge: messages still queued about the merged lead now name the surviving one.

    Their ``lead_id`` and the identity inside the payload (``data.lead``: id, email,
    external_id) become the survivor's, so a receiver files the transition under the person
    who remains; the figures stay those of the moment the transition happened. The merged
    lead's timers go: the survivor, re-scored from every event, plans its own. Returns the
    number of messages moved.
    """
    moved = outbox_repo.pending_for_lead(session, from_id)
    for message in moved:
        payload = dict(message.payload)
        data = dict(payload.get("data") or {})
        lead = dict(data.get("lead") or {})
        lead.update({name: to_lead.get(name) for name in ("id", "email", "external_id")})
        data["lead"] = lead
        payload["data"] = data
        message.payload = payload
        message.lead_id = to_lead["id"]
    timers_repo.delete_for_lead(session, from_id)
    session.flush()
    return len(moved)


# -- subscriptions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SubscriptionChanges:
    """A partial update: ``None`` leaves a field as it is (``description`` uses ``set_description``)."""

    url: str | None = None
    event_types: list[str] | None = None
    filters: dict[str, Any] | None = None
    description: str | None = None
    set_description: bool = False
    enabled: bool | None = None


def checked_url(url: str, *, allow_private: bool) -> str:
    try:
        return validate_url(url, allow_private=allow_private)
    except UnsafeTargetError as exc:
        raise UnsafeWebhookTarget.field("url", str(exc)) from exc


def get_subscription(session: Session, subscription_id: str) -> Subscription:
    sub = subscriptions_repo.get(session, subscription_id)
    if sub is None:
        raise NotFound(f"no subscription {subscription_id!r}")
    return sub


def list_subscriptions(session: Session, enabled: bool | None) -> list[Subscription]:
    return subscriptions_repo.list_all(session, enabled)


@transactional
def create_subscription(
    session: Session,
    *,
    url: str,
    event_types: list[str],
    filters: dict[str, Any],
    description: str | None,
    enabled: bool,
    allow_private: bool,
) -> Subscription:
    now = utcnow()
    sub = Subscription(
        id=new_id("sub"),
        url=checked_url(url, allow_private=allow_private),
        event_types=sorted(set(event_types)),
        filters=filters,
        description=description,
        secret=generate_secret(),
        enabled=enabled,
        disabled_reason=None if enabled else "created disabled",
        disabled_at=None if enabled else now,
        created_at=now,
        updated_at=now,
    )
    subscriptions_repo.add(session, sub)
    return sub


def _enable(sub: Subscription) -> None:
    sub.enabled = True
    sub.disabled_reason = None
    sub.disabled_at = None
    sub.failing_since = None


def _disable(sub: Subscription, now: datetime) -> None:
    if sub.enabled:
        sub.enabled = False
        sub.disabled_reason = "disabled through the API"
        sub.disabled_at = now


def _change(
    session: Session, subscription_id: str, changes: SubscriptionChanges, *, allow_private: bool
) -> Subscription:
    sub = get_subscription(session, subscription_id)
    now = utcnow()
    if changes.url is not None:
        sub.url = checked_url(changes.url, allow_private=allow_private)
    if changes.event_types is not None:
        sub.event_types = sorted(set(changes.event_types))
    if changes.filters is not None:
        sub.filters = changes.filters
    if changes.set_description:
        sub.description = changes.description
    if changes.enabled is True:
        _enable(sub)
    elif changes.enabled is False:
        _disable(sub, now)
    sub.updated_at = now
    session.flush()
    return sub


update_subscription = transactional(_change)


@transactional
def set_enabled(session: Session, subscription_id: str, enabled: bool) -> Subscription:
    """Enable (also after the worker disabled it: its pending messages go out) or disable."""
    return _change(
        session, subscription_id, SubscriptionChanges(enabled=enabled), allow_private=True
    )


@transactional
def delete_subscription(session: Session, subscription_id: str) -> None:
    subscriptions_repo.delete(session, get_subscription(session, subscription_id))


@transactional
def rotate_secret(session: Session, subscription_id: str, overlap_seconds: int) -> Subscription:
    """A new secret; the old one also signs for ``overlap_seconds`` (both signatures are sent)."""
    sub = get_subscription(session, subscription_id)
    now = utcnow()
    if overlap_seconds > 0:
        sub.previous_secret = sub.secret
        sub.previous_secret_expires_at = now + timedelta(seconds=overlap_seconds)
    else:
        sub.previous_secret = None
        sub.previous_secret_expires_at = None
    sub.secret = generate_secret()
    sub.updated_at = now
    session.flush()
    return sub


@transactional
def send_ping(session: Session, subscription_id: str) -> OutboxMessage:
    """Queue a ``webhook.ping`` for one subscription: it goes the way every message goes."""
    sub = get_subscription(session, subscription_id)
    if not sub.enabled:
        raise SubscriptionDisabled("the subscription is disabled; enable it first")
    now = utcnow()
    payload = ping_payload(sub.id, now)
    message = OutboxMessage(
        id=new_id("msg"),
        subscription_id=sub.id,
        event_type=payload["type"],
        payload=payload,
        next_attempt_at=now,
        created_at=now,
    )
    outbox_repo.add_messages(session, [message])
    session.flush()
    return message


# -- deliveries --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryFilters:
    subscription_id: str | None = None
    status: str | None = None
    event_type: str | None = None
    lead_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def get_message(session: Session, message_id: str) -> OutboxMessage:
    message = outbox_repo.get(session, message_id)
    if message is None:
        raise NotFound(f"no delivery {message_id!r}")
    return message


def list_messages(
    session: Session, filters: DeliveryFilters, cursor: str | None, limit: int
) -> tuple[list[OutboxMessage], str | None]:
    """Newest first; the cursor is the last message id of the previous page."""
    rows = outbox_repo.list_messages(
        session,
        subscription_id=filters.subscription_id,
        status=filters.status,
        event_type=filters.event_type,
        lead_id=filters.lead_id,
        since=filters.since,
        until=filters.until,
        before_id=cursor,
        limit=limit + 1,
    )
    next_cursor = rows[limit - 1].id if len(rows) > limit else None
    return rows[:limit], next_cursor


def attempts(session: Session, message_id: str) -> list[DeliveryAttempt]:
    get_message(session, message_id)
    return outbox_repo.attempts(session, message_id)


@transactional
def retry_message(session: Session, message_id: str) -> OutboxMessage:
    """Send this message again now, with the same ``webhook-id`` and a fresh schedule."""
    message = get_message(session, message_id)
    sub = get_subscription(session, message.subscription_id)
    if not sub.enabled:
        raise SubscriptionDisabled(
            f"subscription {sub.id} is disabled ({sub.disabled_reason}); enable it first"
        )
    outbox_repo.requeue(session, message, utcnow())
    return message


@transactional
def replay_messages(
    session: Session,
    *,
    since: datetime,
    until: datetime | None,
    subscription_id: str | None,
    statuses: Sequence[str] | None,
) -> tuple[int, list[str]]:
    """Requeue every message created in ``[since, until)``; also name disabled subscriptions."""
    if until is not None and until <= since:
        raise InvalidInput.field("until", "must be after since")
    if subscription_id is not None:
        get_subscription(session, subscription_id)
    return outbox_repo.replay(
        session,
        since=since,
        until=until,
        subscription_id=subscription_id,
        statuses=list(statuses or MESSAGE_STATUSES),
        now=utcnow(),
    )
