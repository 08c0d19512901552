"""Fresh scores: when time alone may next change a lead, indexed for the sweep.

Revision ID: 0005_fresh_scores
Revises: 0004_reps
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from leadscore_api.storage.base import UTCDateTime

revision: str = "0005_fresh_scores"
down_revision: str | None = "0004_reps"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("leads") as batch:
        batch.add_column(sa.Column("next_change_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_leads_next_change_at", "leads", ["next_change_at"])
    # Every existing lead is due once: the sweep scores it as of now and sets its next time.
    leads = sa.table("leads", sa.column("next_change_at", UTCDateTime()))
    op.execute(leads.update().values(next_change_at=datetime.now(UTC)))


def downgrade() -> None:
    op.drop_index("ix_leads_next_change_at", table_name="leads")
    with op.batch_alter_table("leads") as batch:
        batch.drop_column("next_change_at")
