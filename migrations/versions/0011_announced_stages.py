"""Announced stages: the ``lead.<stage>`` transitions subscribers were already sent, per lead.

A late event replays a lead's timeline and can move or undo the moment it reached a stage; the
lead may then reach it again. Subscribers must hear of each crossing once, so the service
remembers what it announced instead of trusting the replayed timeline. Existing leads start
empty: the stages in their stored summary count as announced too (``service/scoring.py``).

Revision ID: 0011_announced_stages
Revises: 0010_challengers
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0011_announced_stages"
down_revision: str | None = "0010_challengers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("leads") as batch:
        batch.add_column(
            sa.Column(
                "announced_stages",
                sa.JSON().with_variant(JSONB(), "postgresql"),
                nullable=False,
                server_default=sa.text("'[]'"),
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("leads") as batch:
        batch.drop_column("announced_stages")
