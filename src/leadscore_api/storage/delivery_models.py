"""Tables of the delivery subsystem: subscriptions, outbox messages and delivery attempts.

One outbox row is one message for one subscription: it carries the Standard Webhooks message id
(``msg_...``, the receiver's idempotency key, identical on every retry), its own schedule and
status, so that a slow or broken endpoint never delays the messages of another one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from leadscore_api.storage.base import Base, JSONType, utcnow
from leadscore_api.storage.dialects import sqlite_key
from leadscore_api.storage.models import BigIntKey

STATUS_PENDING = "pending"
STATUS_DELIVERED = "delivered"
STATUS_FAILED = "failed"
MESSAGE_STATUSES = (STATUS_PENDING, STATUS_DELIVERED, STATUS_FAILED)


class Subscription(Base):
    """An endpoint that wants some transition types, optionally filtered by ruleset/letter/tier.

    ``secret`` is kept in clear because signing needs it (HMAC); it is shown to the API caller
    only when created or rotated. ``previous_secret`` signs too until ``previous_secret_expires_at``
    so that receivers can roll their secret without rejecting a message.
    """

    __tablename__ = "subscriptions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    event_types: Mapped[list[str]] = mapped_column(JSONType)
    filters: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    description: Mapped[str | None] = mapped_column(Text, default=None)
    secret: Mapped[str] = mapped_column(String(128))
    previous_secret: Mapped[str | None] = mapped_column(String(128), default=None)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text, default=None)
    disabled_at: Mapped[datetime | None] = mapped_column(default=None)
    #: Set by the first failed attempt after a success, cleared by a success: the endpoint is
    #: disabled when it stays set for longer than ``delivery_disable_after_days``.
    failing_since: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (Index("ix_subscriptions_enabled", "enabled"),)


class OutboxMessage(Base):
    """One message for one subscription, from enqueue to delivered or failed (dead letter).

    ``next_attempt_at`` is when the row is next due; while a worker is sending it, it is pushed
    past the send deadline (a lease) and ``claim_token`` names the claim, so that a crashed worker's
    rows become due again and are sent by another (at least once, same ``id``).
    ``schedule_attempts`` counts the attempts of the current schedule (a manual retry or a replay
    of a finished message starts a new one); ``attempts`` counts them all.
    """

    __tablename__ = "outbox_messages"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    subscription_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("subscriptions.id", ondelete="CASCADE")
    )
    event_type: Mapped[str] = mapped_column(String(64))
    lead_id: Mapped[str | None] = mapped_column(String(64), default=None)
    event_id: Mapped[str | None] = mapped_column(String(255), default=None)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16), default=STATUS_PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    schedule_attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=utcnow)
    claim_token: Mapped[str | None] = mapped_column(String(40), default=None)
    last_status: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    last_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    subscription: Mapped[Subscription] = relationship(lazy="raise")

    __table_args__ = (
        # The worker's claim: due pending rows in order.
        Index("ix_outbox_messages_status_next_attempt_at", "status", "next_attempt_at"),
        # The deliveries API: by subscription, status and time.
        Index(
            "ix_outbox_messages_subscription_id_created_at",
            "subscription_id",
            "created_at",
        ),
        Index("ix_outbox_messages_created_at", "created_at"),
        Index("ix_outbox_messages_lead_id", "lead_id"),
    )


class DeliveryAttempt(Base):
    """One HTTP attempt of one message: what the receiver answered and how long it took."""

    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("outbox_messages.id", ondelete="CASCADE")
    )
    subscription_id: Mapped[str] = mapped_column(String(40))
    attempted_at: Mapped[datetime] = mapped_column(default=utcnow)
    duration_ms: Mapped[float] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    success: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    response_body: Mapped[str | None] = mapped_column(Text, default=None)

    __table_args__ = (Index("ix_delivery_attempts_message_id", "message_id"),)


class LeadTimer(Base):
    """A time-driven transition waiting for its moment: an SLA deadline or a re-qualification.

    The scoring path rewrites a lead's timers in the transaction that rescored it
    (:func:`leadscore_api.delivery.timers.schedule_timers`), so a met SLA or a tier change
    cancels or moves them; the timer loop fires the due ones once (``fired_at``).
    """

    __tablename__ = "lead_timers"

    id: Mapped[int] = mapped_column(BigIntKey, autoincrement=True)
    lead_id: Mapped[str] = mapped_column(String(40), ForeignKey("leads.id", ondelete="CASCADE"))
    ruleset_name: Mapped[str] = mapped_column(String(100))
    #: ``sla:<sla id>`` or ``requalify``.
    kind: Mapped[str] = mapped_column(String(120))
    due_at: Mapped[datetime]
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    fired_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (
        sqlite_key("lead_id", "id", sqlite=("id",), name="pk_lead_timers"),
        UniqueConstraint("lead_id", "ruleset_name", "kind", name="uq_lead_timers_lead_id"),
        Index("ix_lead_timers_due_at", "due_at"),
    )
