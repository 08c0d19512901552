"""Dashboard sessions: create, find, end (one row per signed-in browser)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.orm import Session

from leadscore_api.storage.dashboard_models import DashboardSession


def add(session: Session, row: DashboardSession) -> None:
    session.add(row)


def get(session: Session, token_sha256: str) -> DashboardSession | None:
    return session.get(DashboardSession, token_sha256)


def delete_one(session: Session, token_sha256: str) -> None:
    session.execute(delete(DashboardSession).where(DashboardSession.token_sha256 == token_sha256))


def delete_expired(session: Session, now: datetime) -> int:
    """Sessions past their time: removed at each sign-in, so the table stays small."""
    result = session.execute(delete(DashboardSession).where(DashboardSession.expires_at <= now))
    return int(getattr(result, "rowcount", 0) or 0)
