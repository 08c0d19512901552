"""SQL of score snapshots: the nearest copy of a lead's state before a late event."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, delete, select
from sqlalchemy.orm import Session

from leadscore_api.storage.base import Base
from leadscore_api.storage.fast_sql import FastInsert
from leadscore_api.storage.snapshot_models import ScoreSnapshot

SNAPSHOTS_TABLE: Table = Base.metadata.tables["score_snapshots"]
_INSERT = FastInsert(SNAPSHOTS_TABLE)


@dataclass(frozen=True)
class SnapshotData:
    n_events: int
    event_occurred_at: datetime
    event_id: str
    state: dict[str, Any]


def nearest_before(
    session: Session,
    lead_id: str,
    ruleset_name: str,
    ruleset_sha256: str,
    occurred_at: datetime,
    event_id: str,
) -> SnapshotData | None:
    """The latest snapshot taken strictly before the event (``occurred_at``, ``event_id``).

    Ties on the timestamp are decided here, in Python's order of ids, which is the order the
    scoring core applies events in (a database collation may order ids differently).
    """
    rows = session.execute(
        select(
            ScoreSnapshot.n_events,
            ScoreSnapshot.event_occurred_at,
            ScoreSnapshot.event_id,
            ScoreSnapshot.state,
        )
        .where(
            ScoreSnapshot.lead_id == lead_id,
            ScoreSnapshot.ruleset_name == ruleset_name,
            ScoreSnapshot.ruleset_sha256 == ruleset_sha256,
            ScoreSnapshot.event_occurred_at <= occurred_at,
        )
        .order_by(ScoreSnapshot.n_events.desc())
        .limit(8)
    )
    for n_events, at, snap_event_id, state in rows:
        if (at, snap_event_id) < (occurred_at, event_id):
            return SnapshotData(n_events, at, snap_event_id, state)
    return None


def drop(session: Session, lead_id: str, ruleset_name: str, *, after: int | None = None) -> None:
    """Forget a lead's snapshots under a ruleset: all, or those holding more than ``after``
    events (a late event placed before them made them wrong)."""
    statement = delete(ScoreSnapshot).where(
        ScoreSnapshot.lead_id == lead_id, ScoreSnapshot.ruleset_name == ruleset_name
    )
    if after is not None:
        statement = statement.where(ScoreSnapshot.n_events > after)
    session.execute(statement, execution_options={"synchronize_session": False})


def drop_lead(session: Session, lead_id: str) -> None:
    """Every snapshot of a lead (merged away or erased: a snapshot holds its attributes)."""
    session.execute(
        delete(ScoreSnapshot).where(ScoreSnapshot.lead_id == lead_id),
        execution_options={"synchronize_session": False},
    )


def insert_snapshots(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    _INSERT.executemany(session, rows)
