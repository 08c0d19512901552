"""SQL of ``rulesets``: every ruleset text the service ever scored with, by name and sha256."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from leadscore_api.storage.models import RulesetRecord


def find(session: Session, name: str, sha256: str) -> RulesetRecord | None:
    return session.scalar(
        select(RulesetRecord).where(RulesetRecord.name == name, RulesetRecord.sha256 == sha256)
    )


def add_once(session: Session, record: RulesetRecord) -> RulesetRecord:
    """Insert ``record`` unless the same (name, sha256) is stored; return the stored row.

    Replicas starting together may race to insert the same text; the loser's unique-key error
    is absorbed in a savepoint because the row it wanted exists.
    """
    existing = find(session, record.name, record.sha256)
    if existing is not None:
        return existing
    try:
        with session.begin_nested():
            session.add(record)
    except IntegrityError:
        existing = find(session, record.name, record.sha256)
        if existing is None:
            raise
        return existing
    return record
