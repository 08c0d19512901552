"""Tables of the scoring service: leads, their identities, events, scores and history.

A lead's current scores live in two places on purpose: ``lead_scores`` keeps, per ruleset, the
scoring core's incremental state (what the next event needs), and ``leads`` repeats the primary
ruleset's summary in plain columns so that the CRM list filters are ordinary indexed queries.
Both are written in the same transaction, under a lock on the ``leads`` row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from leadscore_api.storage.base import Base, JSONType, utcnow
from leadscore_api.storage.dialects import only_on, sqlite_key

#: Auto-increment keys: 64-bit on PostgreSQL, SQLite's rowid alias (which must be INTEGER).
BigIntKey = BigInteger().with_variant(Integer(), "sqlite")

IDENTITY_EMAIL = "email"
IDENTITY_EXTERNAL_ID = "external_id"


class Lead(Base):
    """A person being scored; the columns mirror the primary ruleset's current summary."""

    __tablename__ = "leads"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    email: Mapped[str | None] = mapped_column(String(320), default=None)
    external_id: Mapped[str | None] = mapped_column(String(200), default=None)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    letter: Mapped[str | None] = mapped_column(String(8), default=None)
    score: Mapped[int] = mapped_column(Integer, default=0)
    tier: Mapped[str | None] = mapped_column(String(40), default=None)
    stage: Mapped[str] = mapped_column(String(40), default="lead")
    components: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    next_action: Mapped[str | None] = mapped_column(String(100), default=None)
    next_action_due: Mapped[datetime | None] = mapped_column(default=None)
    owner: Mapped[str | None] = mapped_column(String(200), default=None)
    #: The team the routing rules chose for the lead; ``owner`` is then one of its reps.
    team: Mapped[str | None] = mapped_column(String(200), default=None)
    ruleset_name: Mapped[str | None] = mapped_column(String(100), default=None)
    ruleset_version: Mapped[int | None] = mapped_column(Integer, default=None)
    #: Other rulesets' summaries, keyed by ruleset name (shown as ``models``).
    models: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: Bumped on every change: a cheap check that a reader saw the latest write.
    version: Mapped[int] = mapped_column(Integer, default=1)
    #: When time alone may next change the summary (decay, expiry, windows): the freshness
    #: sweep re-scores the leads that are due, found through this column's index.
    next_change_at: Mapped[datetime | None] = mapped_column(default=None)
    #: Stages whose ``lead.<stage>`` transition was already queued for subscribers. A late
    #: event replays the lead's timeline and may move, or undo, the moment it reached a stage;
    #: the subscribers were told once and must not be told again when it is reached anew.
    announced_stages: Mapped[list[str]] = mapped_column(
        JSONType, default=list, server_default=text("'[]'")
    )

    __table_args__ = (
        Index("ix_leads_updated_at_id", "updated_at", "id"),
        Index("ix_leads_next_change_at", "next_change_at"),
        Index("ix_leads_tier", "tier"),
        Index("ix_leads_stage", "stage"),
        Index("ix_leads_letter", "letter"),
        Index("ix_leads_score", "score"),
        Index("ix_leads_owner", "owner"),
        Index("ix_leads_team", "team"),
        Index("ix_leads_email", "email"),
        Index("ix_leads_external_id", "external_id"),
    )
    # Optimistic check on top of the row lock: an UPDATE that finds another version fails
    # (StaleDataError) instead of silently overwriting a concurrent change.
    __mapper_args__ = {"version_id_col": version}


class LeadIdentity(Base):
    """One way to recognise a lead (a normalised email or a CRM id); each belongs to one lead.

    Keyed by what it is, not by its lead: ingestion looks an identity up before it knows the
    lead, so on a distributed database the table is spread by ``value`` and the lookup goes to
    one node. That is also why ``lead_id`` has no foreign key to ``leads``: rows spread by
    different columns cannot reference each other. Merges and erasures move or delete the
    identities of a lead explicitly (``storage/repositories/leads.py``).
    """

    __tablename__ = "lead_identities"

    kind: Mapped[str] = mapped_column(String(20))
    value: Mapped[str] = mapped_column(String(320))
    lead_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        PrimaryKeyConstraint("kind", "value", name="pk_lead_identities"),
        Index("ix_lead_identities_lead_id", "lead_id"),
    )


class Event(Base):
    """Every accepted event, once per lead (its id is the idempotency key), with its payload.

    Keyed by (lead id, event id): a retry names the same person, whose identities lead to the
    same lead, so the key finds it there (``leads.lookup``); and a key that includes the lead
    id is what a distributed database needs to keep a lead's rows together.
    """

    __tablename__ = "events"

    id: Mapped[str] = mapped_column(String(200))
    lead_id: Mapped[str] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(100))
    known_type: Mapped[bool] = mapped_column(Boolean, default=True)
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    source: Mapped[str | None] = mapped_column(String(100), default=None)
    properties: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    raw: Mapped[Any | None] = mapped_column(JSONType, default=None)

    __table_args__ = (
        PrimaryKeyConstraint("lead_id", "id", name="pk_events"),
        Index("ix_events_lead_id_occurred_at_id", "lead_id", "occurred_at", "id"),
        Index("ix_events_type_occurred_at", "type", "occurred_at"),
    )


class LeadScore(Base):
    """A lead's incremental scoring state under one ruleset (the core's ``LeadState`` JSON)."""

    __tablename__ = "lead_scores"

    lead_id: Mapped[str] = mapped_column(
        ForeignKey("leads.id", ondelete="CASCADE"), primary_key=True
    )
    ruleset_name: Mapped[str] = mapped_column(String(100), primary_key=True)
    ruleset_version: Mapped[int] = mapped_column(Integer)
    ruleset_sha256: Mapped[str] = mapped_column(String(64))
    state: Mapped[dict[str, Any]] = mapped_column(JSONType)
    summary: Mapped[dict[str, Any]] = mapped_column(JSONType)
    version: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __mapper_args__ = {"version_id_col": version}


class ScoreChange(Base):
    """One entry of a lead's history: what changed, under which ruleset, because of what."""

    __tablename__ = "score_changes"

    #: Generated, increasing: the history's order and the cursor of its pages.
    id: Mapped[int] = mapped_column(BigIntKey, autoincrement=True)
    lead_id: Mapped[str] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"))
    ruleset_name: Mapped[str] = mapped_column(String(100))
    ruleset_version: Mapped[int] = mapped_column(Integer)
    ruleset_sha256: Mapped[str] = mapped_column(String(64))
    #: ``event``, ``attributes`` (API update), ``merge`` or ``rescore``.
    cause: Mapped[str] = mapped_column(String(40))
    #: The latest event folded into this change (the one transitions name) ...
    event_id: Mapped[str | None] = mapped_column(String(200), default=None)
    #: ... and every event of the request that the change folds in, in time order.
    event_ids: Mapped[list[str] | None] = mapped_column(JSONType, default=None)
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    previous: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)
    current: Mapped[dict[str, Any]] = mapped_column(JSONType)
    explanation: Mapped[dict[str, Any]] = mapped_column(JSONType)

    __table_args__ = (
        sqlite_key("lead_id", "id", sqlite=("id",), name="pk_score_changes"),
        # SQLite's key is the id alone: ``report_history``'s foreign key needs this pair unique.
        only_on("sqlite", Index("uq_score_changes_lead_id_id", "lead_id", "id", unique=True)),
    )


class Outcome(Base):
    """A sales outcome reported by the CRM, kept apart for KPIs and backtests."""

    __tablename__ = "outcomes"

    id: Mapped[int] = mapped_column(BigIntKey, autoincrement=True)
    lead_id: Mapped[str] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(40))
    occurred_at: Mapped[datetime]
    source: Mapped[str | None] = mapped_column(String(100), default=None)
    amount: Mapped[float | None] = mapped_column(Float, default=None)

    __table_args__ = (
        sqlite_key("lead_id", "id", sqlite=("id",), name="pk_outcomes"),
        # One outcome per event, as events are unique per lead.
        UniqueConstraint("lead_id", "event_id", name="uq_outcomes_lead_id_event_id"),
        Index("ix_outcomes_type_occurred_at", "type", "occurred_at"),
    )


class RulesetRecord(Base):
    """Each ruleset version the service ever ran, with its exact text, for audit and rescoring."""

    __tablename__ = "rulesets"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    content: Mapped[str] = mapped_column(Text)
    activated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("name", "sha256", name="uq_rulesets_name_sha256"),)


class ApiKey(Base):
    """An API key: only the SHA-256 of its secret is kept (see ``service.api_keys``)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Erasure(Base):
    """What a GDPR erasure removed, as counts only: no id, email or event of the person remains."""

    __tablename__ = "erasures"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    erased_at: Mapped[datetime] = mapped_column(default=utcnow)
    events: Mapped[int] = mapped_column(Integer, default=0)
    identities: Mapped[int] = mapped_column(Integer, default=0)
    score_changes: Mapped[int] = mapped_column(Integer, default=0)
    outcomes: Mapped[int] = mapped_column(Integer, default=0)


# Mailgun signs ``timestamp + token`` but not the body, so a captured signature could be sent
# again with other event data while its timestamp is fresh. Each token is stored with the sha256
# of the body it first came with: the same token with the same body is a retry (its events come
# back ``duplicate``), with another body it is refused. Rows older than the timestamp tolerance
# can never match a fresh request again and are pruned.


class WebhookReplayToken(Base):
    """A signing token seen on an inbound webhook, unique per source."""

    __tablename__ = "webhook_replay_tokens"

    source: Mapped[str] = mapped_column(String(40), primary_key=True)
    token: Mapped[str] = mapped_column(String(200), primary_key=True)
    body_sha256: Mapped[str] = mapped_column(String(64))
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_webhook_replay_tokens_seen_at", "seen_at"),)
