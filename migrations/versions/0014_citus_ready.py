"""Keys a distributed PostgreSQL (Citus) accepts, with the lead id as distribution key.

Revision ID: 0014_citus_ready
Revises: 0013_announced_stages
Create Date: 2026-11-27

Citus keeps one lead's rows on one node only if every unique key of a per-lead table includes
the lead id, and lets a foreign key join two distributed tables only on that column
(``storage/distribution.py`` classifies every table, docs/operations.md has the plan):

* ``events``: key (lead_id, id); an event id is unique per lead, where a retry finds it.
* ``score_changes``, ``outcomes``, ``lead_timers``, ``crm_records``: key (lead_id, id) on
  PostgreSQL, the id still generated (history order and cursors are unchanged). SQLite keeps
  ``PRIMARY KEY (id)``: it generates a key only for a column that is the whole key, and it is
  never distributed (``storage/dialects.py``). ``outcomes``' one-per-event key becomes
  (lead_id, event_id).
* ``report_history``: key (lead_id, change_id), and its foreign key to the history row names
  the lead on both sides. The trigger that followed a merge's ``UPDATE ... SET lead_id`` goes:
  a merge now moves rows by deleting and inserting them (Citus cannot update a distribution
  column), and the insert trigger copies the moved rows like any others.
* ``lead_identities``: keyed by (kind, value), the lookup ingestion makes before it knows the
  lead; on Citus it is spread by ``value``. Its surrogate id goes (nothing read it) and so does
  its foreign key to ``leads`` (tables spread by different columns cannot reference each other).

Every change keeps the rows: the new keys are unique wherever the old ones were. On PostgreSQL
a key change rebuilds that key's index under a lock on the table (about 1.2 s per million rows
of ``events`` on a 2-core machine). Unlike the earlier revisions this one is not
expand/contract: the previous version's look-ups by id alone lose their index and its merges
fail, so it is taken in one step (docs/operations.md, "Upgrades"). SQLite rebuilds the tables
whose constraints change (it cannot drop a constraint), dropping and re-creating the history's
insert trigger around the rebuild of ``report_history``, which the trigger names.

Downgrading puts the old keys back; it stops with an error when an event id was accepted for
two leads since (the old key cannot hold both).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0014_citus_ready"
down_revision: str | None = "0013_announced_stages"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Tables whose generated id joins the lead id in the key on PostgreSQL.
_LEAD_ID_KEYS = ("score_changes", "outcomes", "lead_timers", "crm_records")

# The report_history copy trigger of 0007, as it was and without the branch that followed an
# UPDATE of lead_id (both are kept here so that downgrade restores the original exactly).
_COLUMNS = "change_id, lead_id, ruleset_name, changed_at, stage, previous_stage, score, arrival"
_SQLITE_VALUES = (
    "NEW.id, NEW.lead_id, NEW.ruleset_name, NEW.changed_at,"
    " json_extract(NEW.current, '$.stage'), json_extract(NEW.previous, '$.stage'),"
    " json_extract(NEW.current, '$.score'),"
    " NEW.previous IS NULL OR NEW.previous = 'null'"
)
_PG_VALUES = (
    "NEW.id, NEW.lead_id, NEW.ruleset_name, NEW.changed_at,"
    " NEW.current ->> 'stage', NEW.previous ->> 'stage',"
    " (NEW.current ->> 'score')::double precision,"
    " NEW.previous IS NULL OR jsonb_typeof(NEW.previous) = 'null'"
)
_PG_COPY_INSERT_ONLY = f"""
CREATE OR REPLACE FUNCTION report_history_copy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO report_history ({_COLUMNS}) VALUES ({_PG_VALUES});
    RETURN NULL;
END
$$
"""
_PG_COPY_WITH_MOVE = f"""
CREATE OR REPLACE FUNCTION report_history_copy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO report_history ({_COLUMNS})
        VALUES ({_PG_VALUES});
    ELSE
        UPDATE report_history SET lead_id = NEW.lead_id WHERE change_id = NEW.id;
    END IF;
    RETURN NULL;
END
$$
"""
_SQLITE_INSERT_TRIGGER = (
    "CREATE TRIGGER report_history_on_insert AFTER INSERT ON score_changes BEGIN"
    f" INSERT INTO report_history ({_COLUMNS}) VALUES ({_SQLITE_VALUES});"
    " END"
)
_SQLITE_MOVE_TRIGGER = (
    "CREATE TRIGGER report_history_on_move AFTER UPDATE OF lead_id ON score_changes"
    " BEGIN UPDATE report_history SET lead_id = NEW.lead_id WHERE change_id = NEW.id;"
    " END"
)


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _bigkey() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


# -- upgrade -----------------------------------------------------------------------------------


def upgrade() -> None:
    if _postgresql():
        _upgrade_postgresql()
    else:
        _upgrade_sqlite()


def _set_key(table: str, columns: str) -> None:
    """Replace ``table``'s primary key in one statement (one lock, one index build)."""
    op.execute(
        f"ALTER TABLE {table} DROP CONSTRAINT pk_{table},"
        f" ADD CONSTRAINT pk_{table} PRIMARY KEY ({columns})"
    )


def _upgrade_postgresql() -> None:
    op.execute("DROP TRIGGER IF EXISTS report_history_on_move ON score_changes")
    op.execute(_PG_COPY_INSERT_ONLY)
    # The copy's foreign key leans on the history's key: it goes first, comes back last.
    op.drop_constraint(
        "fk_report_history_change_id_score_changes", "report_history", type_="foreignkey"
    )
    _set_key("events", "lead_id, id")
    for table in _LEAD_ID_KEYS:
        _set_key(table, "lead_id, id")
    _set_key("report_history", "lead_id, change_id")
    op.create_foreign_key(
        "fk_report_history_lead_id_score_changes",
        "report_history",
        "score_changes",
        ["lead_id", "change_id"],
        ["lead_id", "id"],
        ondelete="CASCADE",
    )
    # The new keys start with lead_id: these indexes only repeated them.
    op.drop_index("ix_score_changes_lead_id_id", table_name="score_changes")
    op.create_unique_constraint("uq_outcomes_lead_id_event_id", "outcomes", ["lead_id", "event_id"])
    op.drop_constraint("uq_outcomes_event_id", "outcomes", type_="unique")
    op.drop_index("ix_outcomes_lead_id", table_name="outcomes")

    op.drop_constraint("fk_lead_identities_lead_id_leads", "lead_identities", type_="foreignkey")
    _set_key("lead_identities", "kind, value")
    op.drop_constraint("uq_lead_identities_kind_value", "lead_identities", type_="unique")
    op.drop_column("lead_identities", "id")


#: An index to re-create after a rebuild: (name, columns, unique).
IndexSpec = tuple[str, list[str], bool]


def _rebuild_sqlite(
    name: str, items: Sequence[Any], indexes: Sequence[IndexSpec], *, generated: str = ""
) -> None:
    """Re-create a table with other constraints and the same rows (SQLite cannot alter them).

    ``generated`` names a new column SQLite fills in (a rowid key), not copied. None of the
    tables rebuilt here is referenced by a foreign key, so dropping the old one (with foreign
    keys enforced) deletes nothing else.
    """
    new = f"_0014_{name}"
    op.create_table(new, *items)
    names = ", ".join(
        item.name for item in items if isinstance(item, sa.Column) and item.name != generated
    )
    op.execute(f"INSERT INTO {new} ({names}) SELECT {names} FROM {name}")
    op.drop_table(name)
    op.rename_table(new, name)
    for index_name, columns, unique in indexes:
        op.create_index(index_name, name, columns, unique=unique)


def _events_table(key: tuple[str, ...]) -> list[Any]:
    return [
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
        sa.PrimaryKeyConstraint(*key, name="pk_events"),
    ]


_EVENTS_INDEXES: list[IndexSpec] = [
    ("ix_events_lead_id_occurred_at_id", ["lead_id", "occurred_at", "id"], False),
    ("ix_events_type_occurred_at", ["type", "occurred_at"], False),
]


def _outcomes_table(unique: tuple[str, ...], unique_name: str) -> list[Any]:
    return [
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
        sa.UniqueConstraint(*unique, name=unique_name),
    ]


def _report_history_table(key: tuple[str, ...], foreign_key: sa.ForeignKeyConstraint) -> list[Any]:
    return [
        sa.Column("change_id", _bigkey(), nullable=False),
        sa.Column("lead_id", sa.String(40), nullable=False),
        sa.Column("ruleset_name", sa.String(100), nullable=False),
        sa.Column("changed_at", _ts(), nullable=False),
        sa.Column("stage", sa.String(40), nullable=True),
        sa.Column("previous_stage", sa.String(40), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("arrival", sa.Boolean(), nullable=False),
        foreign_key,
        sa.PrimaryKeyConstraint(*key, name="pk_report_history"),
    ]


_REPORT_HISTORY_INDEXES: list[IndexSpec] = [
    (
        "ix_report_history_ruleset_name_changed_at",
        [
            "ruleset_name",
            "changed_at",
            "lead_id",
            "stage",
            "previous_stage",
            "score",
            "arrival",
        ],
        False,
    )
]


def _upgrade_sqlite() -> None:
    # Both triggers name report_history, which is rebuilt below: SQLite refuses to rename a
    # table while a trigger names a table that is gone. The insert trigger comes back after.
    op.execute("DROP TRIGGER IF EXISTS report_history_on_move")
    op.execute("DROP TRIGGER IF EXISTS report_history_on_insert")
    _rebuild_sqlite("events", _events_table(("lead_id", "id")), _EVENTS_INDEXES)
    _rebuild_sqlite(
        "outcomes",
        _outcomes_table(("lead_id", "event_id"), "uq_outcomes_lead_id_event_id"),
        [("ix_outcomes_type_occurred_at", ["type", "occurred_at"], False)],
    )
    # The history keeps its rowid key; the pair the copy's foreign key names must be unique.
    op.create_index("uq_score_changes_lead_id_id", "score_changes", ["lead_id", "id"], unique=True)
    op.drop_index("ix_score_changes_lead_id_id", table_name="score_changes")
    _rebuild_sqlite(
        "report_history",
        _report_history_table(
            ("lead_id", "change_id"),
            sa.ForeignKeyConstraint(
                ["lead_id", "change_id"],
                ["score_changes.lead_id", "score_changes.id"],
                name="fk_report_history_lead_id_score_changes",
                ondelete="CASCADE",
            ),
        ),
        _REPORT_HISTORY_INDEXES,
    )
    op.execute(_SQLITE_INSERT_TRIGGER)
    _rebuild_sqlite(
        "lead_identities",
        [
            sa.Column("kind", sa.String(20), nullable=False),
            sa.Column("value", sa.String(320), nullable=False),
            sa.Column("lead_id", sa.String(40), nullable=False),
            sa.Column("created_at", _ts(), nullable=False),
            sa.PrimaryKeyConstraint("kind", "value", name="pk_lead_identities"),
        ],
        [("ix_lead_identities_lead_id", ["lead_id"], False)],
    )


# -- downgrade ---------------------------------------------------------------------------------


def _refuse_if_shared(table: str, column: str, what: str) -> None:
    shared = (
        op.get_bind()
        .execute(
            sa.text(f"SELECT {column} FROM {table} GROUP BY {column} HAVING count(*) > 1 LIMIT 1")
        )
        .first()
    )
    if shared is not None:
        raise RuntimeError(
            f"cannot downgrade below 0014_citus_ready: {what} belongs to more than one lead"
            f" ({table}.{column} would no longer be unique); merge or erase those leads first"
        )


def downgrade() -> None:
    _refuse_if_shared("events", "id", "an event id")
    _refuse_if_shared("outcomes", "event_id", "an outcome's event id")
    if _postgresql():
        _downgrade_postgresql()
    else:
        _downgrade_sqlite()


def _downgrade_postgresql() -> None:
    op.add_column("lead_identities", sa.Column("id", sa.BigInteger(), nullable=True))
    op.execute("CREATE SEQUENCE lead_identities_id_seq OWNED BY lead_identities.id")
    op.execute("UPDATE lead_identities SET id = nextval('lead_identities_id_seq')")
    op.execute(
        "ALTER TABLE lead_identities ALTER COLUMN id SET DEFAULT nextval('lead_identities_id_seq'),"
        " ALTER COLUMN id SET NOT NULL"
    )
    op.create_unique_constraint(
        "uq_lead_identities_kind_value", "lead_identities", ["kind", "value"]
    )
    _set_key("lead_identities", "id")
    op.create_foreign_key(
        "fk_lead_identities_lead_id_leads",
        "lead_identities",
        "leads",
        ["lead_id"],
        ["id"],
        ondelete="CASCADE",
    )

    op.create_index("ix_outcomes_lead_id", "outcomes", ["lead_id"])
    op.create_unique_constraint("uq_outcomes_event_id", "outcomes", ["event_id"])
    op.drop_constraint("uq_outcomes_lead_id_event_id", "outcomes", type_="unique")
    op.create_index("ix_score_changes_lead_id_id", "score_changes", ["lead_id", "id"])
    op.drop_constraint(
        "fk_report_history_lead_id_score_changes", "report_history", type_="foreignkey"
    )
    _set_key("report_history", "change_id")
    for table in _LEAD_ID_KEYS:
        _set_key(table, "id")
    _set_key("events", "id")
    op.create_foreign_key(
        "fk_report_history_change_id_score_changes",
        "report_history",
        "score_changes",
        ["change_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.execute(_PG_COPY_WITH_MOVE)
    op.execute(
        "CREATE TRIGGER report_history_on_move AFTER UPDATE OF lead_id ON score_changes"
        " FOR EACH ROW EXECUTE FUNCTION report_history_copy()"
    )


def _downgrade_sqlite() -> None:
    op.execute("DROP TRIGGER IF EXISTS report_history_on_insert")
    _rebuild_sqlite(
        "lead_identities",
        [
            sa.Column("id", _bigkey(), autoincrement=True, nullable=False),
            sa.Column("kind", sa.String(20), nullable=False),
            sa.Column("value", sa.String(320), nullable=False),
            sa.Column("lead_id", sa.String(40), nullable=False),
            sa.Column("created_at", _ts(), nullable=False),
            sa.ForeignKeyConstraint(
                ["lead_id"],
                ["leads.id"],
                name="fk_lead_identities_lead_id_leads",
                ondelete="CASCADE",
            ),
            sa.PrimaryKeyConstraint("id", name="pk_lead_identities"),
            sa.UniqueConstraint("kind", "value", name="uq_lead_identities_kind_value"),
        ],
        [("ix_lead_identities_lead_id", ["lead_id"], False)],
        generated="id",
    )
    _rebuild_sqlite(
        "report_history",
        _report_history_table(
            ("change_id",),
            sa.ForeignKeyConstraint(
                ["change_id"],
                ["score_changes.id"],
                name="fk_report_history_change_id_score_changes",
                ondelete="CASCADE",
            ),
        ),
        _REPORT_HISTORY_INDEXES,
    )
    op.create_index("ix_score_changes_lead_id_id", "score_changes", ["lead_id", "id"])
    op.drop_index("uq_score_changes_lead_id_id", table_name="score_changes")
    _rebuild_sqlite(
        "outcomes",
        _outcomes_table(("event_id",), "uq_outcomes_event_id"),
        [
            ("ix_outcomes_lead_id", ["lead_id"], False),
            ("ix_outcomes_type_occurred_at", ["type", "occurred_at"], False),
        ],
    )
    _rebuild_sqlite("events", _events_table(("id",)), _EVENTS_INDEXES)
    op.execute(_SQLITE_INSERT_TRIGGER)
    op.execute(_SQLITE_MOVE_TRIGGER)
