"""The transactional outbox: transitions become messages in the transaction that changed the lead.

:func:`enqueue_transitions` is called by the scoring path with its own session, before it
commits; the rows it adds commit or roll back with the lead, so a transition is never published
for a change that did not happen, nor lost for one that did. It runs one indexed query (enabled
subscriptions) and keeps nothing between calls, so a subscription created on another replica
counts from its next call on.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, event, select
from sqlalchemy.orm import Session

from leadscore_api.delivery.models import (
    DeliveryAttempt,
    LeadTimer,
    OutboxMessage,
    Subscription,
    new_id,
)
from leadscore_api.storage.base import utcnow

if TYPE_CHECKING:
    from leadscore_api.scoring import Transition

#: Every transition type a subscription may ask for; ``*`` means all of them.
TRANSITION_TYPES = (
    "lead.mql",
    "lead.sql",
    "lead.stage_changed",
    "lead.tier_changed",
    "lead.letter_changed",
    "lead.sla_breached",
    "lead.requalify_due",
)
WILDCARD = "*"
#: Sent by ``POST /v1/subscriptions/{id}/test``; delivered to that subscription only.
PING_TYPE = "webhook.ping"

#: Lead fields copied into ``data.lead``.
LEAD_FIELDS = (
    "id",
    "email",
    "external_id",
    "letter",
    "score",
    "tier",
    "stage",
    "owner",
    "next_action",
    "next_action_due",
)
#: An explanation larger than this (serialised) is left out of the payload, which Standard
#: Webhooks advises to keep small; the receiver can fetch ``/v1/leads/{id}/explain``.
MAX_EXPLANATION_CHARS = 16_000

_wake_lock = threading.Lock()
_wake_listeners: list[Callable[[], None]] = []


def add_wake_listener(listener: Callable[[], None]) -> None:
    """Register a callable run after a commit that added messages (an in-process worker's nudge).

    This is only a hint to deliver sooner than the next poll: workers in other processes find the
    rows by polling, so nothing depends on it.
    """
    with _wake_lock:
        _wake_listeners.append(listener)


def remove_wake_listener(listener: Callable[[], None]) -> None:
    with _wake_lock:
        if listener in _wake_listeners:
            _wake_listeners.remove(listener)


def _wake(session: Session) -> None:
    session.info.pop("leadscore_outbox_wake", None)
    with _wake_lock:
        listeners = list(_wake_listeners)
    for listener in listeners:
        listener()


def wake_after_commit(session: Session) -> None:
    """Nudge in-process workers once ``session`` commits (not before: the rows must be visible)."""
    if session.info.get("leadscore_outbox_wake"):
        return
    session.info["leadscore_outbox_wake"] = True
    event.listen(session, "after_commit", _wake, once=True)


def _rfc3339(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return value


def subscription_matches(
    subscription: Subscription,
    event_type: str,
    *,
    ruleset_name: str,
    letter: str | None,
    tier: str | None,
) -> bool:
    """Whether ``subscription`` wants a transition of ``event_type`` for this lead."""
    types = subscription.event_types or []
    if WILDCARD not in types and event_type not in types:
        return False
    filters = subscription.filters or {}
    wanted_ruleset = filters.get("ruleset")
    if wanted_ruleset and wanted_ruleset != ruleset_name:
        return False
    letters = filters.get("letter")
    if letters and letter not in letters:
        return False
    tiers = filters.get("tier")
    return not (tiers and tier not in tiers)


def build_payload(
    *,
    event_type: str,
    at: datetime,
    lead: dict[str, Any],
    from_value: str | None,
    to_value: str | None,
    event_id: str | None,
    ruleset_name: str,
    ruleset_version: int,
    explanation: dict[str, Any],
) -> dict[str, Any]:
    """The Standard Webhooks body: ``type``, ``timestamp`` and ``data``."""
    data: dict[str, Any] = {
        "lead": {name: _rfc3339(lead.get(name)) for name in LEAD_FIELDS},
        "change": {"from": from_value, "to": to_value},
        "event_id": event_id,
        "ruleset": {"name": ruleset_name, "version": ruleset_version},
    }
    explained = json.loads(json.dumps(explanation, default=_json_default))
    if len(json.dumps(explained)) <= MAX_EXPLANATION_CHARS:
        data["explanation"] = explained
    else:
        data["explanation"] = None
        data["explanation_truncated"] = True
    return {"type": event_type, "timestamp": _rfc3339(at), "data": data}


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return _rfc3339(value)
    return str(value)


def enqueue_transitions(
    session: Session,
    *,
    lead: dict[str, Any],
    transitions: list[Transition],
    event_id: str | None,
    ruleset_name: str,
    ruleset_version: int,
    explanation: dict[str, Any],
) -> int:
    """Add one outbox row per (transition, subscription that wants it); return how many.

    Call it inside the transaction that stores the lead's change; it does not flush or commit.
    ``lead`` is the lead as the API shows it (id, email, external_id, letter, score, tier, stage,
    owner, next_action, next_action_due); the filters compare its current letter and tier.
    """
    if not transitions:
        return 0
    subscriptions = session.scalars(
        select(Subscription).where(Subscription.enabled.is_(True))
    ).all()
    if not subscriptions:
        return 0
    now = utcnow()
    lead_id = lead.get("id")
    count = 0
    for transition in transitions:
        targets = [
            sub
            for sub in subscriptions
            if subscription_matches(
                sub,
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
        for sub in targets:
            session.add(
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
            )
            count += 1
    if count:
        wake_after_commit(session)
    return count


def enqueue_ping(session: Session, subscription: Subscription) -> OutboxMessage:
    """Queue a ``webhook.ping`` for one subscription: it goes the way every message goes."""
    now = utcnow()
    message = OutboxMessage(
        id=new_id("msg"),
        subscription_id=subscription.id,
        event_type=PING_TYPE,
        payload={
            "type": PING_TYPE,
            "timestamp": _rfc3339(now),
            "data": {"subscription_id": subscription.id, "message": "ping"},
        },
        next_attempt_at=now,
        created_at=now,
    )
    session.add(message)
    wake_after_commit(session)
    return message


def erase_lead(session: Session, lead_id: str) -> int:
    """GDPR erasure hook: drop every message (and its attempts) about the lead, and its timers.

    Payloads carry the person's email and ids, so nothing about them may stay queued or logged.
    Called by the service's erasure in its transaction; returns the number of messages removed.
    """
    ids = select(OutboxMessage.id).where(OutboxMessage.lead_id == lead_id)
    session.execute(delete(DeliveryAttempt).where(DeliveryAttempt.message_id.in_(ids)))
    result = session.execute(delete(OutboxMessage).where(OutboxMessage.lead_id == lead_id))
    session.execute(delete(LeadTimer).where(LeadTimer.lead_id == lead_id))
    return int(getattr(result, "rowcount", 0) or 0)
