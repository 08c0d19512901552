"""Where each table lives on a distributed PostgreSQL (Citus), with the lead id as the key.

Past one database, the per-lead tables are spread over several nodes by lead id: one lead's
rows (the lead, its events, scores, history, timers...) sit together on one node, so the
transaction that scores a lead runs there. Every table of the metadata is classified here, with
why, and a test fails when a table is added without a place (tests/api/test_distribution.py):

* **distributed by lead**: rows of one lead, co-located with ``leads`` (distribution column
  ``lead_id``; ``id`` for ``leads`` itself);
* **distributed by its own key**: looked up by a key of their own before the lead is known
  (an identity by its value, a tombstone digest by itself), spread by that key;
* **reference**: small global tables with a copy on every node, which per-lead rows may
  reference by a foreign key;
* **coordinator-local**: work queues claimed with ``FOR UPDATE SKIP LOCKED`` across all leads
  and the coordinator's own state; Citus locks rows only in a statement that targets one
  shard, and a local table keeps plain PostgreSQL semantics in the same transaction.

What Citus requires of the schema (checked against the migrated PostgreSQL catalog by
tests/api/test_distribution.py): every primary key and unique index of a distributed table
includes its distribution column; a foreign key between distributed tables joins them on the
distribution column on both sides; no reference or local table references a distributed one.
What it requires of the statements: no ``UPDATE`` of a distribution column (a merge deletes and
inserts), and ``SELECT ... FOR UPDATE`` only on one shard (:func:`is_distributed`).

:func:`render_plan` writes the SQL that distributes a migrated database (``leadscore
citus-plan``), from this classification, so the two cannot drift. docs/operations.md says how
to run it and what was and was not verified.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import MetaData
from sqlalchemy.orm import Session


class Placement(StrEnum):
    LEAD = "distributed by lead"
    OWN_KEY = "distributed by its own key"
    REFERENCE = "reference"
    LOCAL = "coordinator-local"


@dataclass(frozen=True)
class TablePlace:
    """Where one table goes, by which column when distributed, and why."""

    table: str
    placement: Placement
    reason: str
    #: The distribution column (distributed tables only).
    column: str | None = None

    @property
    def distributed(self) -> bool:
        return self.placement in (Placement.LEAD, Placement.OWN_KEY)


def _lead(table: str, reason: str, column: str = "lead_id") -> TablePlace:
    return TablePlace(table, Placement.LEAD, reason, column)


def _own(table: str, column: str, reason: str) -> TablePlace:
    return TablePlace(table, Placement.OWN_KEY, reason, column)


def _reference(table: str, reason: str) -> TablePlace:
    return TablePlace(table, Placement.REFERENCE, reason)


def _local(table: str, reason: str) -> TablePlace:
    return TablePlace(table, Placement.LOCAL, reason)


#: Every table of the service. The co-location group of the lead tables is named after
#: :data:`ANCHOR`.
PLACES: tuple[TablePlace, ...] = (
    _lead("leads", "the lead itself: every per-lead row is kept beside it", column="id"),
    _lead("events", "written and replayed with their lead; unique per lead (idempotency)"),
    _lead("lead_scores", "the lead's scoring state, read and written under the lead's lock"),
    _lead("score_changes", "the lead's history, written in its scoring transaction"),
    _lead("score_snapshots", "copies of the lead's state its late events replay from"),
    _lead("outcomes", "the lead's CRM outcomes, one per event of the lead"),
    _lead("lead_timers", "rewritten by every scoring of the lead; the loop claims them per lead"),
    _lead("report_history", "the narrow copy of the lead's history, written by its trigger"),
    _lead("crm_records", "the lead's record in each CRM, read and written with the lead"),
    _own(
        "lead_identities",
        "value",
        "found by (kind, value) before the lead is known: one node answers the lookup",
    ),
    _own(
        "erased_keys",
        "digest",
        "the tombstone grows with every erasure and is screened by digest",
    ),
    _reference("rulesets", "every ruleset version; referenced by activations and challengers"),
    _reference("ruleset_activations", "the log of version switches, small"),
    _reference("ruleset_challengers", "one row per A/B test, small"),
    _reference("ruleset_generation", "one row replicas poll for ruleset changes"),
    _reference("api_keys", "one row per calling system, read on every request (cached)"),
    _reference("subscriptions", "webhook endpoints; referenced by crm_connectors and the outbox"),
    _reference("crm_connectors", "configured CRM accounts; referenced by every lead's crm_records"),
    _reference("reps", "the sales reps leads are routed to in their scoring transaction"),
    _reference("rep_teams", "each team's hand-out strategy, small"),
    _reference("acquisition_costs", "one row per source and month, read by the reports"),
    _local(
        "outbox_messages",
        "the delivery queue, claimed across all leads with FOR UPDATE SKIP LOCKED",
    ),
    _local("delivery_attempts", "each message's attempts, written with its claim"),
    _local("jobs", "background jobs, leased with FOR UPDATE SKIP LOCKED"),
    _local("dashboard_sessions", "sign-ins, written and read by the coordinator's sessions"),
    _local("webhook_replay_tokens", "inbound signing tokens seen, written per webhook, pruned"),
    _local("install_secrets", "the tombstone's key, read once per connection"),
    _local("erasures", "anonymous counts of erasures, never read with lead rows"),
)
#: The table every lead-distributed table is co-located with.
ANCHOR = "leads"
BY_TABLE: dict[str, TablePlace] = {place.table: place for place in PLACES}


def unclassified(metadata: MetaData) -> list[str]:
    """Tables of ``metadata`` that have no place here (a new table must get one)."""
    return sorted(name for name in metadata.tables if name not in BY_TABLE)


def stale(metadata: MetaData) -> list[str]:
    """Places of tables that ``metadata`` no longer has."""
    return sorted(name for name in BY_TABLE if name not in metadata.tables)


# -- statements on a distributed database -------------------------------------------------------

#: Execution option that sets :func:`is_distributed` (true or false) instead of detecting it.
DISTRIBUTED_OPTION = "leadscore_distributed"
_DETECTED = "leadscore.distributed"


def is_distributed(session: Session) -> bool:
    """Whether the database distributes the tables (Citus): then a statement that locks or
    bulk-writes rows of distributed tables must target one lead.

    Citus runs ``SELECT ... FOR UPDATE`` only when it targets one shard: the usual ``id IN
    (...)`` over a request's leads, or a claim of due rows across all leads, is refused. So the
    repositories then lock each lead in a statement of its own (in id order, as before, so two
    transactions still never deadlock) and claim due rows by reading them without a lock and
    locking each by its lead; and the bulk writes of ``storage/fast_sql.py`` send one
    statement per row (pipelined by the driver) instead of one ``unnest`` statement, which
    Citus could not route to the rows' shards. Elsewhere the one-statement forms are cheaper
    and stay.

    Detected once per connection (is the ``citus`` extension installed?); the
    :data:`DISTRIBUTED_OPTION` execution option overrides it, which is how the tests run the
    per-lead statements on plain PostgreSQL.
    """
    connection = session.connection()
    forced = connection.get_execution_options().get(DISTRIBUTED_OPTION)
    if forced is not None:
        return bool(forced)
    if connection.dialect.name != "postgresql":
        return False
    info = connection.info
    detected = info.get(_DETECTED)
    if detected is None:
        detected = bool(
            connection.exec_driver_sql(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus')"
            ).scalar()
        )
        info[_DETECTED] = detected
    return bool(detected)


# -- the plan ----------------------------------------------------------------------------------


def _ordered(metadata: MetaData, placements: Iterable[Placement]) -> list[TablePlace]:
    """The places of ``placements``, referenced tables before the tables referencing them."""
    wanted = set(placements)
    return [
        BY_TABLE[table.name]
        for table in metadata.sorted_tables
        if BY_TABLE[table.name].placement in wanted
    ]


def render_plan(
    metadata: MetaData, revision: str, *, coordinator_host: str, coordinator_port: int
) -> str:
    """The SQL that distributes a database migrated to ``revision`` over a Citus cluster."""
    missing = unclassified(metadata)
    if missing:
        raise ValueError(f"tables without a place in storage/distribution.py: {missing}")
    host = coordinator_host.replace("'", "''")
    lines = [
        "-- leadscore: the schema distributed over Citus, with the lead id as distribution key.",
        "-- Generated by `leadscore citus-plan` from src/leadscore_api/storage/distribution.py,",
        f"-- for a database that `leadscore migrate` brought to revision {revision}.",
        "-- Run it once, with psql on the coordinator, as the database owner, while no",
        "-- leadscore process is connected (distributing a table copies its rows and blocks",
        "-- writes). Workers must already be added (citus_add_node). See docs/operations.md.",
        "\\set ON_ERROR_STOP on",
        "",
        "CREATE EXTENSION IF NOT EXISTS citus;",
        "",
        "-- The coordinator keeps the coordinator-local tables and a copy of the reference",
        "-- tables, so it is a node of the cluster's metadata (its address as workers reach it).",
        f"SELECT citus_set_coordinator_host('{host}', {int(coordinator_port)});",
        "",
        "-- Reference tables: small and global, a copy on every node; referenced tables first.",
    ]
    for place in _ordered(metadata, [Placement.REFERENCE]):
        lines.append(f"SELECT create_reference_table('{place.table}');  -- {place.reason}")
    lines += [
        "",
        "-- Coordinator-local tables: they stay on the coordinator, plain PostgreSQL tables that",
        "-- the application's transactions use beside the distributed ones; added to the",
        "-- metadata so that their foreign keys to reference tables hold and every node sees",
        "-- them.",
    ]
    for place in _ordered(metadata, [Placement.LOCAL]):
        lines.append(
            f"SELECT citus_add_local_table_to_metadata('{place.table}');  -- {place.reason}"
        )
    lines += [
        "",
        "-- score_changes copies each new row into report_history with a trigger (migration",
        "-- 0007). Both are distributed by lead and co-located, so the trigger's insert goes to",
        "-- the row's own node; Citus accepts triggers on distributed tables with this setting.",
        "SET citus.enable_unsafe_triggers TO on;",
        "",
        f"-- Distributed by lead: co-located with {ANCHOR}, so one lead's rows share a node.",
    ]
    for place in _ordered(metadata, [Placement.LEAD]):
        if place.table == ANCHOR:
            lines.append(
                f"SELECT create_distributed_table('{place.table}', '{place.column}');"
                f"  -- {place.reason}"
            )
        else:
            lines.append(
                f"SELECT create_distributed_table('{place.table}', '{place.column}',"
                f" colocate_with => '{ANCHOR}');  -- {place.reason}"
            )
    lines += ["", "-- Distributed by their own key, each in a co-location group of its own."]
    for place in _ordered(metadata, [Placement.OWN_KEY]):
        lines.append(
            f"SELECT create_distributed_table('{place.table}', '{place.column}',"
            f" colocate_with => 'none');  -- {place.reason}"
        )
    lines += [
        "",
        "-- The coordinator's own copy of the rows now in the shards is no longer read: free it.",
    ]
    for place in reversed(_ordered(metadata, [Placement.LEAD, Placement.OWN_KEY])):
        lines.append(f"SELECT truncate_local_data_after_distributing_table('{place.table}');")
    return "\n".join(lines) + "\n"
