"""SQL of ``webhook_replay_tokens``: single-use signing tokens of inbound webhooks."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.orm import Session

from leadscore_api.storage.models import WebhookReplayToken


def prune(session: Session, older_than: datetime) -> None:
    session.execute(delete(WebhookReplayToken).where(WebhookReplayToken.seen_at < older_than))


def get(session: Session, source: str, token: str) -> WebhookReplayToken | None:
    return session.get(WebhookReplayToken, (source, token))


def add(session: Session, source: str, token: str, body_sha256: str, seen_at: datetime) -> None:
    """Insert now: a concurrent insert of the same token fails on the primary key, and the
    transaction is run again by the unit of work, which then finds this row."""
    session.add(
        WebhookReplayToken(source=source, token=token, body_sha256=body_sha256, seen_at=seen_at)
    )
    session.flush()
