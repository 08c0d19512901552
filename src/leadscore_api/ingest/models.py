"""The one table inbound webhooks need: Mailgun's single-use tokens, remembered across replicas.

Mailgun signs ``timestamp + token`` but not the body, so a captured signature could be sent again
with other event data while its timestamp is fresh. Each token is stored with the sha256 of the
body it first came with: the same token with the same body is a retry (its events come back
``duplicate``), with another body it is refused. Rows older than the timestamp tolerance can
never match a fresh request again and are pruned.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from leadscore_api.storage.base import Base, utcnow


class WebhookReplayToken(Base):
    """A signing token seen on an inbound webhook, unique per source."""

    __tablename__ = "webhook_replay_tokens"

    source: Mapped[str] = mapped_column(String(40), primary_key=True)
    token: Mapped[str] = mapped_column(String(200), primary_key=True)
    body_sha256: Mapped[str] = mapped_column(String(64))
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_webhook_replay_tokens_seen_at", "seen_at"),)
