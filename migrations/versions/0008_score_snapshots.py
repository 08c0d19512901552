"""Score snapshots: late events replay from the nearest copy of the state before them.

Revision ID: 0008_score_snapshots
Revises: 0007_acquisition_costs
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from leadscore_api.storage.base import UTCDateTime

revision: str = "0008_score_snapshots"
down_revision: str | None = "0007_acquisition_costs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "score_snapshots",
        sa.Column(
            "lead_id",
            sa.String(40),
            sa.ForeignKey("leads.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("ruleset_name", sa.String(100), primary_key=True),
        sa.Column("n_events", sa.Integer(), primary_key=True),
        sa.Column("ruleset_sha256", sa.String(64), nullable=False),
        sa.Column("event_occurred_at", UTCDateTime(), nullable=False),
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("state", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("score_snapshots")
