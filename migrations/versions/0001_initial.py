"""Initial schema: leads, identities, events, scores, history, rulesets, API keys, outcomes.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-26

Written with plain SQLAlchemy types (not the application's column classes) so that this file
keeps describing the same schema whatever later code does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _bigkey() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "leads",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("external_id", sa.String(200), nullable=True),
        sa.Column("attributes", _json(), nullable=False),
        sa.Column("letter", sa.String(8), nullable=True),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("tier", sa.String(40), nullable=True),
        sa.Column("stage", sa.String(40), nullable=False),
        sa.Column("components", _json(), nullable=False),
        sa.Column("next_action", sa.String(100), nullable=True),
        sa.Column("next_action_due", _ts(), nullable=True),
        sa.Column("owner", sa.String(200), nullable=True),
        sa.Column("ruleset_name", sa.String(100), nullable=True),
        sa.Column("ruleset_version", sa.Integer(), nullable=True),
        sa.Column("models", _json(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_leads"),
    )
    op.create_index("ix_leads_updated_at_id", "leads", ["updated_at", "id"])
    for column in ("tier", "stage", "letter", "score", "owner", "email", "external_id"):
        op.create_index(f"ix_leads_{column}", "leads", [column])

    op.create_table(
        "lead_identities",
        sa.Column("id", _bigkey(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("value", sa.String(320), nullable=False),
        sa.Column("lead_id", sa.String(40), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(
            ["lead_id"], ["leads.id"], name="fk_lead_identities_lead_id_leads", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_lead_identities"),
        sa.UniqueConstraint("kind", "value", name="uq_lead_identities_kind_value"),
    )
    op.create_index("ix_lead_identities_lead_id", "lead_identities", ["lead_id"])

    op.create_table(
        "events",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("lead_id", sa.String(40), nullable=False),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("known_type", sa.Boolean(), nullable=False),
        sa.Column("occurred_at", _ts(), nullable=False),
        sa.Column("received_at", _ts(), nullable=False),
        sa.Column("source", sa.String(100), nullable=True),
        sa.Column("properties", _json(), nullable=False),
        sa.Column("attributes", _json(), nullable=False),
        sa.Column("raw", _json(), nullable=True),
        sa.ForeignKeyConstraint(
            ["lead_id"], ["leads.id"], name="fk_events_lead_id_leads", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("ix_events_lead_id_occurred_at_id", "events", ["lead_id", "occurred_at", "id"])
    op.create_index("ix_events_type_occurred_at", "events", ["type", "occurred_at"])

    op.create_table(
        "lead_scores",
        sa.Column("lead_id", sa.String(40), nullable=False),
        sa.Column("ruleset_name", sa.String(100), nullable=False),
        sa.Column("ruleset_version", sa.Integer(), nullable=False),
        sa.Column("ruleset_sha256", sa.String(64), nullable=False),
        sa.Column("state", _json(), nullable=False),
        sa.Column("summary", _json(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(
            ["lead_id"], ["leads.id"], name="fk_lead_scores_lead_id_leads", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("lead_id", "ruleset_name", name="pk_lead_scores"),
    )

    op.create_table(
        "score_changes",
        sa.Column("id", _bigkey(), autoincrement=True, nullable=False),
        sa.Column("lead_id", sa.String(40), nullable=False),
        sa.Column("ruleset_name", sa.String(100), nullable=False),
        sa.Column("ruleset_version", sa.Integer(), nullable=False),
        sa.Column("ruleset_sha256", sa.String(64), nullable=False),
        sa.Column("cause", sa.String(40), nullable=False),
        sa.Column("event_id", sa.String(200), nullable=True),
        sa.Column("event_ids", _json(), nullable=True),
        sa.Column("changed_at", _ts(), nullable=False),
        sa.Column("previous", _json(), nullable=True),
        sa.Column("current", _json(), nullable=False),
        sa.Column("explanation", _json(), nullable=False),
        sa.ForeignKeyConstraint(
            ["lead_id"], ["leads.id"], name="fk_score_changes_lead_id_leads", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_score_changes"),
    )
    op.create_index("ix_score_changes_lead_id_id", "score_changes", ["lead_id", "id"])

    op.create_table(
        "outcomes",
        sa.Column("id", _bigkey(), autoincrement=True, nullable=False),
        sa.Column("lead_id", sa.String(40), nullable=False),
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("type", sa.String(40), nullable=False),
        sa.Column("occurred_at", _ts(), nullable=False),
        sa.Column("source", sa.String(100), nullable=True),
        sa.Column("amount", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["lead_id"], ["leads.id"], name="fk_outcomes_lead_id_leads", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_outcomes"),
        sa.UniqueConstraint("event_id", name="uq_outcomes_event_id"),
    )
    op.create_index("ix_outcomes_lead_id", "outcomes", ["lead_id"])
    op.create_index("ix_outcomes_type_occurred_at", "outcomes", ["type", "occurred_at"])

    op.create_table(
        "rulesets",
        sa.Column("id", _bigkey(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("activated_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rulesets"),
        sa.UniqueConstraint("name", "sha256", name="uq_rulesets_name_sha256"),
    )

    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("scopes", _json(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("revoked_at", _ts(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
    )

    op.create_table(
        "erasures",
        sa.Column("id", _bigkey(), autoincrement=True, nullable=False),
        sa.Column("erased_at", _ts(), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("identities", sa.Integer(), nullable=False),
        sa.Column("score_changes", sa.Integer(), nullable=False),
        sa.Column("outcomes", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_erasures"),
    )


def downgrade() -> None:
    for table in (
        "erasures",
        "api_keys",
        "rulesets",
        "outcomes",
        "score_changes",
        "lead_scores",
        "events",
        "lead_identities",
        "leads",
    ):
        op.drop_table(table)
