"""Reports: acquisition costs per source and month, and the history index the KPIs read.

Revision ID: 0007_acquisition_costs
Revises: 0005_fresh_scores
Create Date: 2026-11-26

Plain SQLAlchemy types, like the earlier revisions, so the file keeps describing the same
schema whatever the models become.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_acquisition_costs"
down_revision: str | None = "0005_fresh_scores"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "acquisition_costs",
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("amount", sa.Numeric(14, 2), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source", "month", name="pk_acquisition_costs"),
    )
    op.create_index("ix_acquisition_costs_month", "acquisition_costs", ["month"])
    op.create_index(
        "ix_score_changes_ruleset_name_changed_at",
        "score_changes",
        ["ruleset_name", "changed_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_score_changes_ruleset_name_changed_at", table_name="score_changes")
    op.drop_index("ix_acquisition_costs_month", table_name="acquisition_costs")
    op.drop_table("acquisition_costs")
