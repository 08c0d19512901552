"""Inbound webhooks: single-use signing tokens (Mailgun), shared by every replica.

Revision ID: 0003_webhook_replay_tokens
Revises: 0002_delivery
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_webhook_replay_tokens"
down_revision: str | None = "0002_delivery"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "webhook_replay_tokens",
        sa.Column("source", sa.String(40), nullable=False),
        sa.Column("token", sa.String(200), nullable=False),
        sa.Column("body_sha256", sa.String(64), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source", "token", name="pk_webhook_replay_tokens"),
    )
    op.create_index("ix_webhook_replay_tokens_seen_at", "webhook_replay_tokens", ["seen_at"])


def downgrade() -> None:
    op.drop_index("ix_webhook_replay_tokens_seen_at", table_name="webhook_replay_tokens")
    op.drop_table("webhook_replay_tokens")
