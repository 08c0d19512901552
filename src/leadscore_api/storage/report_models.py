"""Tables and indexes of the reports: acquisition costs, and the history index the KPIs read.

Costs are entered per acquisition source (the lead's ``source`` attribute: ``paid_search``,
``referral``...) and calendar month, in euros, because that is how an SME gets its bills (a
month of ads, a trade fair) and how the procedure measures cost per lead (monthly).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import Index, Numeric, String
from sqlalchemy.orm import Mapped, mapped_column

from leadscore_api.storage.base import Base, utcnow
from leadscore_api.storage.models import ScoreChange


class AcquisitionCost(Base):
    """What one source cost in one month (EUR); a source that costs nothing is entered as 0."""

    __tablename__ = "acquisition_costs"

    source: Mapped[str] = mapped_column(String(100), primary_key=True)
    #: ``YYYY-MM``: text sorts and compares like the month it names, on SQLite and PostgreSQL.
    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    amount: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_acquisition_costs_month", "month"),)


# The reports read a ruleset's history from the start of the period on: without this index
# every report scans the whole history of every ruleset. Declared here, on the history table,
# so that the reports' needs stay with the reports.
SCORE_CHANGES_BY_RULESET_TIME = Index(
    "ix_score_changes_ruleset_name_changed_at",
    ScoreChange.ruleset_name,
    ScoreChange.changed_at,
)
