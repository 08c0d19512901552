"""Challengers: a stored ruleset version scoring beside the active one, not acted on (A/B).

Revision ID: 0010_challengers
Revises: 0009_dashboard_sessions
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_challengers"
down_revision: str | None = "0009_dashboard_sessions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ruleset_challengers",
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column(
            "ruleset_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_ruleset_challengers"),
        sa.ForeignKeyConstraint(
            ["ruleset_id"], ["rulesets.id"], name="fk_ruleset_challengers_ruleset_id_rulesets"
        ),
    )


def downgrade() -> None:
    op.drop_table("ruleset_challengers")
