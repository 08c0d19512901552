"""Snapshots of a lead's scoring state, so a late event replays from near its own time.

Why: the incremental state folds events in time order; an event older than the last one
applied cannot be folded in and the lead is scored again from its stored events. From the
first event, that cost grew without bound with the lead's age (a lead with 10,000 events paid
for 10,000 at every late event). The state is copied every ``SNAPSHOT_EVERY`` events, and a
late event replays from the nearest copy before it: its cost is bounded by the events that
happened after it plus one interval.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from leadscore_api.storage.base import Base, JSONType


class ScoreSnapshot(Base):
    """A lead's ``LeadState`` under one ruleset text, right after the event it names."""

    __tablename__ = "score_snapshots"

    lead_id: Mapped[str] = mapped_column(
        ForeignKey("leads.id", ondelete="CASCADE"), primary_key=True
    )
    ruleset_name: Mapped[str] = mapped_column(String(100), primary_key=True)
    #: How many events the state holds: the snapshot's position in the lead's history.
    n_events: Mapped[int] = mapped_column(Integer, primary_key=True)
    ruleset_sha256: Mapped[str] = mapped_column(String(64))
    #: The last event folded in: (occurred_at, id) orders the lead's events.
    event_occurred_at: Mapped[datetime]
    event_id: Mapped[str] = mapped_column(String(200))
    state: Mapped[dict[str, Any]] = mapped_column(JSONType)
