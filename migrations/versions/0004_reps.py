"""Rep directory: reps, each team's assignment strategy, and the team a lead was routed to.

Revision ID: 0004_reps
Revises: 0003_webhook_replay_tokens
Create Date: 2026-11-26

Plain SQLAlchemy types, like 0001 and 0002, so the file keeps describing the same schema
whatever the models become.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_reps"
down_revision: str | None = "0003_webhook_replay_tokens"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "reps",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("team", sa.String(200), nullable=False),
        sa.Column("industries", _json(), nullable=False),
        sa.Column("regions", _json(), nullable=False),
        sa.Column("min_employees", sa.Integer(), nullable=False),
        sa.Column("max_employees", sa.Integer(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=True),
        sa.Column("last_assigned_at", _ts(), nullable=True),
        sa.Column("source", sa.String(10), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_reps"),
    )
    op.create_index("ix_reps_team_active", "reps", ["team", "active"])

    op.create_table(
        "rep_teams",
        sa.Column("team", sa.String(200), nullable=False),
        sa.Column("strategy", sa.String(20), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("team", name="pk_rep_teams"),
    )

    with op.batch_alter_table("leads") as batch:
        batch.add_column(sa.Column("team", sa.String(200), nullable=True))
    op.create_index("ix_leads_team", "leads", ["team"])


def downgrade() -> None:
    op.drop_index("ix_leads_team", table_name="leads")
    with op.batch_alter_table("leads") as batch:
        batch.drop_column("team")
    op.drop_table("rep_teams")
    op.drop_index("ix_reps_team_active", table_name="reps")
    op.drop_table("reps")
