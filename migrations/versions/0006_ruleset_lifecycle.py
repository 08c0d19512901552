"""Ruleset lifecycle: the activation log, the generation replicas poll, and background jobs.

Revision ID: 0006_ruleset_lifecycle
Revises: 0005_fresh_scores
Create Date: 2026-11-26

Plain SQLAlchemy types, like 0001, so the file keeps describing the same schema whatever the
models become. No activation rows are written here: the first start after the upgrade
activates the versions in its rules folder, as every start did before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006_ruleset_lifecycle"
down_revision: str | None = "0005_fresh_scores"
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
        "ruleset_activations",
        sa.Column("id", _bigkey(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("ruleset_id", _bigkey(), nullable=False),
        sa.Column("previous_id", _bigkey(), nullable=True),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("activated_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ruleset_activations"),
        sa.ForeignKeyConstraint(
            ["ruleset_id"], ["rulesets.id"], name="fk_ruleset_activations_ruleset_id_rulesets"
        ),
        sa.ForeignKeyConstraint(
            ["previous_id"], ["rulesets.id"], name="fk_ruleset_activations_previous_id_rulesets"
        ),
    )
    op.create_index("ix_ruleset_activations_name_id", "ruleset_activations", ["name", "id"])

    op.create_table(
        "ruleset_generation",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ruleset_generation"),
    )

    op.create_table(
        "jobs",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=True),
        sa.Column("cursor", sa.String(100), nullable=True),
        sa.Column("params", _json(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("lease_owner", sa.String(100), nullable=True),
        sa.Column("lease_until", _ts(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("started_at", _ts(), nullable=True),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.Column("finished_at", _ts(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
    )
    op.create_index("ix_jobs_status_created_at", "jobs", ["status", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_status_created_at", table_name="jobs")
    op.drop_table("jobs")
    op.drop_table("ruleset_generation")
    op.drop_index("ix_ruleset_activations_name_id", table_name="ruleset_activations")
    op.drop_table("ruleset_activations")
