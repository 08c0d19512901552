"""Announced stages: the ``lead.<stage>`` transitions subscribers were already sent, per lead.

A late event replays a lead's timeline and can move or undo the moment it reached a stage; the
lead may then reach it again. Subscribers must hear of each crossing once, so the service
remembers what it announced instead of trusting the replayed timeline. Existing leads start
empty: the stages in their stored summary count as announced too (``service/scoring.py``).

Revision ID: 0013_announced_stages
Revises: 0010_challengers
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0013_announced_stages"
down_revision: str | None = "0012_crm_connectors"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE on both databases: a batch "move and copy" of ``leads`` on SQLite would
    # drop the table, and its ON DELETE CASCADE would empty the history and the events.
    op.add_column(
        "leads",
        sa.Column(
            "announced_stages",
            sa.JSON().with_variant(JSONB(), "postgresql"),
            nullable=False,
            server_default=sa.text("'[]'"),
        ),
    )


def downgrade() -> None:
    op.drop_column("leads", "announced_stages")  # SQLite 3.35+ drops a column in place
