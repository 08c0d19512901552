"""CRM connectors: the configured CRM accounts and each lead's CRM record.

Revision ID: 0012_crm_connectors
Revises: 0010_challengers
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012_crm_connectors"
down_revision: str | None = "0011_privacy"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "crm_connectors",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("base_url", sa.Text(), nullable=False),
        sa.Column("credentials", _json(), nullable=False),
        sa.Column("field_map", _json(), nullable=False),
        sa.Column("owner_map", _json(), nullable=False),
        sa.Column("create_missing", sa.Boolean(), nullable=False),
        sa.Column("options", _json(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("subscription_id", sa.String(40), nullable=False),
        sa.Column("token_state", _json(), nullable=False),
        sa.Column("pull_cursor", _ts(), nullable=True),
        sa.Column("pull_lease_owner", sa.String(60), nullable=True),
        sa.Column("pull_lease_until", _ts(), nullable=True),
        sa.Column("last_pull_at", _ts(), nullable=True),
        sa.Column("last_pull_error", sa.Text(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscriptions.id"],
            name="fk_crm_connectors_subscription_id_subscriptions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("name", name="pk_crm_connectors"),
        sa.UniqueConstraint("subscription_id", name="uq_crm_connectors_subscription_id"),
    )
    op.create_table(
        "crm_records",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("connector", sa.String(64), nullable=False),
        sa.Column("lead_id", sa.String(40), nullable=False),
        sa.Column("object_type", sa.String(64), nullable=False),
        sa.Column("record_id", sa.String(200), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(
            ["connector"],
            ["crm_connectors.name"],
            name="fk_crm_records_connector_crm_connectors",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_crm_records"),
        sa.UniqueConstraint("connector", "lead_id", name="uq_crm_records_connector_lead_id"),
    )
    op.create_index(
        "ix_crm_records_connector_record_id", "crm_records", ["connector", "record_id"]
    )
    op.create_index("ix_crm_records_lead_id", "crm_records", ["lead_id"])


def downgrade() -> None:
    op.drop_index("ix_crm_records_lead_id", table_name="crm_records")
    op.drop_index("ix_crm_records_connector_record_id", table_name="crm_records")
    op.drop_table("crm_records")
    op.drop_table("crm_connectors")
