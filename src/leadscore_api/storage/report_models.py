"""Tables of the reports: acquisition costs, and the narrow copy of the history they read.

Costs are entered per acquisition source (the lead's ``source`` attribute: ``paid_search``,
``referral``...) and calendar month, in euros, because that is how an SME gets its bills (a
month of ads, a trade fair) and how the procedure measures cost per lead (monthly).

``report_history`` repeats, for each row of ``score_changes``, the few values the reports
read (stage, previous stage, score, whether it is the lead's first row under the ruleset) in
plain columns. The history rows are wide (summaries and explanations as JSON): reading a year of
them to count stages cost about a second on 100,000 leads, most of it fetching and parsing JSON
the reports do not need. Database triggers (migration ``0007_acquisition_costs``) write the copy
in the same statement as the history row, and follow a merge that moves history to another
lead; deleting a history row (erasure) deletes its copy through the foreign key. So the copy is
never behind and no code path has to remember it.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKeyConstraint,
    Index,
    Numeric,
    PrimaryKeyConstraint,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from leadscore_api.storage.base import Base, utcnow
from leadscore_api.storage.models import BigIntKey


class AcquisitionCost(Base):
    """What one source cost in one month (EUR); a source that costs nothing is entered as 0."""

    __tablename__ = "acquisition_costs"

    source: Mapped[str] = mapped_column(String(100), primary_key=True)
    #: ``YYYY-MM``: text sorts and compares like the month it names, on SQLite and PostgreSQL.
    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    amount: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_acquisition_costs_month", "month"),)


class ReportHistory(Base):
    """One ``score_changes`` row as the reports read it; written by triggers only."""

    __tablename__ = "report_history"

    change_id: Mapped[int] = mapped_column(BigIntKey)
    lead_id: Mapped[str] = mapped_column(String(40))
    ruleset_name: Mapped[str] = mapped_column(String(100))
    changed_at: Mapped[datetime]
    stage: Mapped[str | None] = mapped_column(String(40), default=None)
    previous_stage: Mapped[str | None] = mapped_column(String(40), default=None)
    score: Mapped[float | None] = mapped_column(Float, default=None)
    #: The lead's first row under the ruleset (no previous summary): when it arrived.
    arrival: Mapped[bool] = mapped_column(Boolean, default=False)

    # Every column the reports read, after the range they read by: the index alone answers
    # (SQLite reads it in time order; PostgreSQL with an index-only scan once vacuumed).
    __table_args__ = (
        PrimaryKeyConstraint("lead_id", "change_id", name="pk_report_history"),
        # The history row and its copy are one lead's rows: the key includes the lead id on
        # both sides, so a distributed database keeps them together.
        ForeignKeyConstraint(
            ["lead_id", "change_id"],
            ["score_changes.lead_id", "score_changes.id"],
            name="fk_report_history_lead_id_score_changes",
            ondelete="CASCADE",
        ),
        Index(
            "ix_report_history_ruleset_name_changed_at",
            "ruleset_name",
            "changed_at",
            "lead_id",
            "stage",
            "previous_stage",
            "score",
            "arrival",
        ),
    )
