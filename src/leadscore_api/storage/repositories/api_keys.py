"""SQL of ``api_keys``."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from leadscore_api.storage.models import ApiKey


def get(session: Session, key_id: str) -> ApiKey | None:
    return session.get(ApiKey, key_id)


def add(session: Session, row: ApiKey) -> None:
    session.add(row)
    session.flush()


def list_all(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))
