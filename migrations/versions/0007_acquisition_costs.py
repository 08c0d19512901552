"""Reports: acquisition costs per source and month, and the narrow copy of the history.

Revision ID: 0007_acquisition_costs
Revises: 0006_ruleset_lifecycle
Create Date: 2026-11-26

Plain SQLAlchemy types, like the earlier revisions, so the file keeps describing the same
schema whatever the models become. ``report_history`` is filled by triggers on
``score_changes`` (why: ``storage/report_models.py``), written once per dialect, and from the
history already stored when the revision runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_acquisition_costs"
down_revision: str | None = "0006_ruleset_lifecycle"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = "change_id, lead_id, ruleset_name, changed_at, stage, previous_stage, score, arrival"

_SQLITE_VALUES = (
    "{row}.id, {row}.lead_id, {row}.ruleset_name, {row}.changed_at,"
    " json_extract({row}.current, '$.stage'), json_extract({row}.previous, '$.stage'),"
    " json_extract({row}.current, '$.score'),"
    " {row}.previous IS NULL OR {row}.previous = 'null'"
)
_PG_VALUES = (
    "{row}.id, {row}.lead_id, {row}.ruleset_name, {row}.changed_at,"
    " {row}.current ->> 'stage', {row}.previous ->> 'stage',"
    " ({row}.current ->> 'score')::double precision,"
    " {row}.previous IS NULL OR jsonb_typeof({row}.previous) = 'null'"
)


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

    big_int = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "report_history",
        sa.Column("change_id", big_int, nullable=False),
        sa.Column("lead_id", sa.String(40), nullable=False),
        sa.Column("ruleset_name", sa.String(100), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stage", sa.String(40), nullable=True),
        sa.Column("previous_stage", sa.String(40), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("arrival", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["change_id"],
            ["score_changes.id"],
            name="fk_report_history_change_id_score_changes",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("change_id", name="pk_report_history"),
    )
    op.create_index(
        "ix_report_history_ruleset_name_changed_at",
        "report_history",
        [
            "ruleset_name",
            "changed_at",
            "lead_id",
            "stage",
            "previous_stage",
            "score",
            "arrival",
        ],
    )

    if op.get_bind().dialect.name == "postgresql":
        values = _PG_VALUES
        op.execute(
            f"""
            CREATE FUNCTION report_history_copy() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'INSERT' THEN
                    INSERT INTO report_history ({_COLUMNS})
                    VALUES ({values.format(row="NEW")});
                ELSE
                    UPDATE report_history SET lead_id = NEW.lead_id WHERE change_id = NEW.id;
                END IF;
                RETURN NULL;
            END
            $$
            """
        )
        op.execute(
            "CREATE TRIGGER report_history_on_insert AFTER INSERT ON score_changes"
            " FOR EACH ROW EXECUTE FUNCTION report_history_copy()"
        )
        op.execute(
            "CREATE TRIGGER report_history_on_move AFTER UPDATE OF lead_id ON score_changes"
            " FOR EACH ROW EXECUTE FUNCTION report_history_copy()"
        )
    else:
        values = _SQLITE_VALUES
        op.execute(
            "CREATE TRIGGER report_history_on_insert AFTER INSERT ON score_changes BEGIN"
            f" INSERT INTO report_history ({_COLUMNS}) VALUES ({values.format(row='NEW')});"
            " END"
        )
        op.execute(
            "CREATE TRIGGER report_history_on_move AFTER UPDATE OF lead_id ON score_changes"
            " BEGIN UPDATE report_history SET lead_id = NEW.lead_id WHERE change_id = NEW.id;"
            " END"
        )
    op.execute(
        f"INSERT INTO report_history ({_COLUMNS})"
        f" SELECT {values.format(row='score_changes')} FROM score_changes"
    )


def downgrade() -> None:
    op.execute(
        "DROP TRIGGER IF EXISTS report_history_on_move ON score_changes"
        if op.get_bind().dialect.name == "postgresql"
        else "DROP TRIGGER IF EXISTS report_history_on_move"
    )
    op.execute(
        "DROP TRIGGER IF EXISTS report_history_on_insert ON score_changes"
        if op.get_bind().dialect.name == "postgresql"
        else "DROP TRIGGER IF EXISTS report_history_on_insert"
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS report_history_copy()")
    op.drop_index("ix_report_history_ruleset_name_changed_at", table_name="report_history")
    op.drop_table("report_history")
    op.drop_index("ix_acquisition_costs_month", table_name="acquisition_costs")
    op.drop_table("acquisition_costs")
