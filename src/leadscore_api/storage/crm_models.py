"""Tables of the CRM connectors: the configured CRM accounts and the CRM record of each lead.

A connector owns one ``subscriptions`` row (its outbox target), so that what it sends to the
CRM is made of ordinary outbox messages: the same retries, dead letters, manual retry, replay
and ``/v1/deliveries`` listing as webhooks. The subscription is never POSTed to: the worker
hands ``crm.*`` messages to the connector instead.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from leadscore_api.storage.base import Base, JSONType, utcnow
from leadscore_api.storage.dialects import sqlite_key
from leadscore_api.storage.models import BigIntKey


class CrmConnector(Base):
    """One configured CRM account (two HubSpot portals are two connectors).

    ``credentials`` is kept in clear because the connector must send it; the API never returns
    it (only masked). ``token_state`` is the connector's TokenCache (OAuth access tokens, the
    instance URL...), in the database so that replicas reuse one token instead of each
    refreshing. The pull lease keeps one replica at a time pulling this connector's changes.
    """

    __tablename__ = "crm_connectors"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    base_url: Mapped[str] = mapped_column(Text)
    credentials: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    field_map: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    owner_map: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    create_missing: Mapped[bool] = mapped_column(Boolean, default=True)
    options: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    #: The outbox target whose messages are this connector's.
    subscription_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("subscriptions.id", ondelete="CASCADE"), unique=True
    )
    token_state: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    #: Where the next pull of changes starts (the connector's own cursor, a time).
    pull_cursor: Mapped[datetime | None] = mapped_column(default=None)
    pull_lease_owner: Mapped[str | None] = mapped_column(String(60), default=None)
    pull_lease_until: Mapped[datetime | None] = mapped_column(default=None)
    last_pull_at: Mapped[datetime | None] = mapped_column(default=None)
    last_pull_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class CrmRecord(Base):
    """The CRM record (contact / lead / person) that stands for a lead in one connector's CRM.

    Unique per connector and lead; looked up by record id when a notification names a record.
    """

    __tablename__ = "crm_records"

    id: Mapped[int] = mapped_column(BigIntKey, autoincrement=True)
    connector: Mapped[str] = mapped_column(
        String(64), ForeignKey("crm_connectors.name", ondelete="CASCADE")
    )
    lead_id: Mapped[str] = mapped_column(String(40))
    object_type: Mapped[str] = mapped_column(String(64))
    record_id: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        sqlite_key("lead_id", "id", sqlite=("id",), name="pk_crm_records"),
        UniqueConstraint("connector", "lead_id", name="uq_crm_records_connector_lead_id"),
        Index("ix_crm_records_connector_record_id", "connector", "record_id"),
        Index("ix_crm_records_lead_id", "lead_id"),
    )
