"""The schema is ready for a distributed PostgreSQL (Citus) with the lead id as distribution key.

No Citus engine runs here, so readiness is checked as structure: every table has a place
(``storage/distribution.py``); the migrated PostgreSQL schema, read back from its catalog, obeys
the rules Citus sets for those places; the plan (``leadscore citus-plan``) places every table
once; and the statements the service runs never do what Citus refuses (captured from the
driver while leads are ingested, merged, erased, swept, and their timers fired).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import Column, Integer, MetaData, Table, event, insert, inspect, select, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from leadscore_api.cli import main
from leadscore_api.service import freshness
from leadscore_api.service import timers as timers_service
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.db import make_engine
from leadscore_api.storage.dialects import sqlite_primary_key
from leadscore_api.storage.distribution import (
    ANCHOR,
    BY_TABLE,
    PLACES,
    Placement,
    render_plan,
    stale,
    unclassified,
)
from leadscore_api.storage.metadata import all_tables
from leadscore_api.storage.migrate import upgrade_database
from leadscore_api.storage.models import ScoreChange
from leadscore_api.storage.repositories import reps as reps_repo

from .helpers import BIG_MANUFACTURER, qualified_stream, run_as_distributed
from .helpers import event as make_event

# -- the classification ------------------------------------------------------------------------


def test_every_table_has_a_place_and_a_reason() -> None:
    metadata = all_tables()
    assert unclassified(metadata) == [], "give each new table a place in storage/distribution.py"
    assert stale(metadata) == []
    assert len({place.table for place in PLACES}) == len(PLACES)
    for place in PLACES:
        table = metadata.tables[place.table]
        assert place.reason, place.table
        if place.placement is Placement.LEAD:
            assert place.column == ("id" if place.table == ANCHOR else "lead_id"), place.table
        if place.distributed:
            assert place.column is not None and place.column in table.c, place.table
        else:
            assert place.column is None, place.table


def test_a_table_added_without_a_place_is_refused() -> None:
    metadata = MetaData()
    for table in all_tables().tables.values():
        table.to_metadata(metadata)
    Table("lead_notes", metadata, Column("id", Integer, primary_key=True))
    assert unclassified(metadata) == ["lead_notes"]
    with pytest.raises(ValueError, match="lead_notes"):
        render_plan(metadata, "head", coordinator_host="localhost", coordinator_port=5432)


# -- the plan ----------------------------------------------------------------------------------

_PLACING = re.compile(
    r"^SELECT (create_reference_table|citus_add_local_table_to_metadata|create_distributed_table)"
    r"\('(\w+)'(?:, '(\w+)')?(?:, colocate_with => '(\w+)')?\);",
    re.MULTILINE,
)
_FUNCTION = {
    Placement.REFERENCE: "create_reference_table",
    Placement.LOCAL: "citus_add_local_table_to_metadata",
    Placement.LEAD: "create_distributed_table",
    Placement.OWN_KEY: "create_distributed_table",
}


def test_the_plan_places_every_table_once_in_an_order_citus_accepts() -> None:
    result = CliRunner().invoke(main, ["citus-plan", "--coordinator-host", "10.0.0.7"])
    assert result.exit_code == 0, result.output
    plan = result.output
    assert "CREATE EXTENSION IF NOT EXISTS citus;" in plan
    assert "SELECT citus_set_coordinator_host('10.0.0.7', 5432);" in plan
    assert "revision 0014_citus_ready" in plan
    placed = _PLACING.findall(plan)
    names = [table for _, table, _, _ in placed]
    assert sorted(names) == sorted(all_tables().tables), "every table, once"
    assert len(set(names)) == len(names)
    order = {table: n for n, table in enumerate(names)}
    for function, table, column, colocate in placed:
        place = BY_TABLE[table]
        assert function == _FUNCTION[place.placement], table
        assert (column or None) == place.column, table
        if place.placement is Placement.LEAD and table != ANCHOR:
            assert colocate == ANCHOR and order[ANCHOR] < order[table], table
        if place.placement is Placement.OWN_KEY:
            assert colocate == "none", table
    # A table is placed after every table it references (Citus checks the foreign keys then).
    for table in all_tables().sorted_tables:
        for key in table.foreign_keys:
            assert order[key.column.table.name] < order[table.name], (
                table.name,
                key.target_fullname,
            )
    # Triggers on distributed tables (the history's copy) need this before distributing.
    assert plan.index("SET citus.enable_unsafe_triggers TO on;") < plan.index(
        "create_distributed_table('score_changes'"
    )


# -- the SQLite keys ---------------------------------------------------------------------------


def test_sqlite_keeps_a_generated_key_where_postgresql_adds_the_lead(tmp_path: Any) -> None:
    """Migrated and created from the models alike, SQLite generates the ids (rowid keys)."""
    migrated_url = f"sqlite:///{tmp_path / 'migrated.db'}"
    upgrade_database(migrated_url)
    created = make_engine(f"sqlite:///{tmp_path / 'created.db'}", poolclass=NullPool)
    migrated = make_engine(migrated_url, poolclass=NullPool)
    try:
        all_tables().create_all(created)
        for engine in (migrated, created):
            found = inspect(engine)
            for table in all_tables().sorted_tables:
                key = found.get_pk_constraint(table.name)["constrained_columns"]
                assert tuple(key) == sqlite_primary_key(table), table.name
            with engine.begin() as connection:
                connection.execute(
                    insert(all_tables().tables["leads"]),
                    [{"id": "lead_1", **_lead_defaults()}],
                )
                connection.execute(
                    insert(all_tables().tables["score_changes"]), [_change("lead_1")] * 2
                )
                ids = connection.scalars(select(ScoreChange.id).order_by(ScoreChange.id)).all()
                assert ids == [1, 2]
        with migrated.connect() as connection:
            # The migrated history is copied for the reports, keyed by lead and change.
            copied = connection.execute(text("SELECT lead_id, change_id FROM report_history"))
            assert sorted(copied) == [("lead_1", 1), ("lead_1", 2)]
    finally:
        created.dispose()
        migrated.dispose()


def _lead_defaults() -> dict[str, Any]:
    now = utcnow()
    return {
        "attributes": {},
        "score": 0,
        "stage": "lead",
        "components": {},
        "models": {},
        "created_at": now,
        "updated_at": now,
        "version": 1,
        "announced_stages": [],
    }


def _change(lead_id: str) -> dict[str, Any]:
    return {
        "lead_id": lead_id,
        "ruleset_name": "r",
        "ruleset_version": 1,
        "ruleset_sha256": "0" * 64,
        "cause": "event",
        "changed_at": utcnow(),
        "current": {"stage": "lead", "score": 1},
        "explanation": {},
    }


# -- the migrated PostgreSQL catalog obeys Citus's rules ----------------------------------------

_UNIQUE_KEYS = """
SELECT c.relname, i.relname,
       ARRAY(SELECT a.attname FROM unnest(x.indkey::int2[]) AS k(attnum)
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum)
FROM pg_index x
JOIN pg_class c ON c.oid = x.indrelid
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND x.indisunique
"""
_FOREIGN_KEYS = """
SELECT k.conname, s.relname, t.relname,
       ARRAY(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY AS u(attnum, n)
             JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.attnum ORDER BY u.n),
       ARRAY(SELECT a.attname FROM unnest(k.confkey) WITH ORDINALITY AS u(attnum, n)
             JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.attnum ORDER BY u.n),
       k.confdeltype, k.confupdtype
FROM pg_constraint k
JOIN pg_class s ON s.oid = k.conrelid
JOIN pg_class t ON t.oid = k.confrelid
JOIN pg_namespace n ON n.oid = s.relnamespace
WHERE n.nspname = 'public' AND k.contype = 'f'
"""
_COLUMNS = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
"""
#: The tables only Alembic uses (its revision): a plain table left on the coordinator.
_TOOLING = {"alembic_version"}


def _catalog(url: str) -> dict[str, list[tuple[Any, ...]]]:
    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return {
                name: [tuple(row) for row in connection.exec_driver_sql(sql)]
                for name, sql in (
                    ("keys", _UNIQUE_KEYS),
                    ("foreign_keys", _FOREIGN_KEYS),
                    ("columns", _COLUMNS),
                )
            }
    finally:
        engine.dispose()


def test_the_migrated_postgresql_schema_obeys_citus_rules(pg_url: str) -> None:
    upgrade_database(pg_url)
    catalog = _catalog(pg_url)
    columns = {(table, name): rest for table, name, *rest in catalog["columns"]}
    tables = {table for table, _ in columns} - _TOOLING
    assert tables == set(BY_TABLE), "the database and the classification name the same tables"

    for place in PLACES:
        if not place.distributed:
            continue
        assert place.column is not None
        type_, not_null, _ = columns[(place.table, place.column)]
        # Citus cannot route a row without a distribution value.
        assert not_null, f"{place.table}.{place.column} must be NOT NULL"
        if place.placement is Placement.LEAD:
            # Co-located tables hash the same type the same way.
            assert type_ == columns[(ANCHOR, "id")][0], (place.table, type_)
        # Generated ids come from sequences (bigserial), which Citus supports everywhere.
        assert not any(
            ident for (table, _), (_, _, ident) in columns.items() if table == place.table
        ), f"{place.table} has an identity column"

    # Every primary key and unique index of a distributed table includes its column.
    checked = set()
    for table, index, key in catalog["keys"]:
        if table in _TOOLING:
            continue
        place = BY_TABLE[table]
        if place.distributed:
            assert place.column in key, f"{table}: unique index {index} {key} lacks {place.column}"
            checked.add(table)
    assert checked == {place.table for place in PLACES if place.distributed}

    for name, source, target, columns_from, columns_to, on_delete, on_update in catalog[
        "foreign_keys"
    ]:
        src, dst = BY_TABLE[source], BY_TABLE[target]
        if src.distributed and dst.distributed:
            # Between distributed tables: co-located, and joined on the distribution column.
            assert src.placement is dst.placement is Placement.LEAD, name
            assert src.column in columns_from, f"{name} lacks {source}.{src.column}"
            position = list(columns_from).index(src.column)
            assert list(columns_to)[position] == dst.column, (
                f"{name} joins {source}.{src.column} to {target}.{columns_to[position]}"
            )
        elif dst.distributed:
            pytest.fail(f"{name}: a {src.placement} table cannot reference distributed {target}")
        elif src.distributed:
            assert dst.placement is Placement.REFERENCE, (
                f"{name}: distributed {source} may reference reference tables only, not {target}"
            )
        elif src.placement is Placement.REFERENCE:
            assert dst.placement is Placement.REFERENCE or (on_delete, on_update) in {
                ("a", "a"),
                ("r", "r"),
            }, f"{name}: a reference table's key to a local table cannot cascade"


# -- the statements obey Citus's rules ---------------------------------------------------------


class _Recording(psycopg.Cursor[Any]):
    """A driver cursor that writes down every statement it sends."""

    statements: list[str] = []

    def execute(self, query: Any, params: Any = None, **kw: Any) -> Any:
        self.statements.append(_text(query, self))
        return super().execute(query, params, **kw)

    def executemany(self, query: Any, params_seq: Any, **kw: Any) -> None:
        self.statements.append(_text(query, self))
        super().executemany(query, params_seq, **kw)


def _text(query: Any, cursor: psycopg.Cursor[Any]) -> str:
    if isinstance(query, bytes):
        return query.decode()
    if isinstance(query, str):
        return query
    return str(query.as_string(cursor))


@pytest.fixture
def recorded(pg_url: str) -> Iterator[tuple[TestClient, list[str]]]:
    """The service on PostgreSQL, running the statements it runs on Citus, recorded."""
    from fastapi import FastAPI
    from tests.conftest import TEST_ADMIN_KEY, make_settings

    from leadscore_api.app import create_app

    upgrade_database(pg_url)
    app: FastAPI = create_app(make_settings(pg_url))
    with TestClient(
        app, headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"}, raise_server_exceptions=False
    ) as client:
        engine = app.state.engine

        @event.listens_for(engine, "connect")
        def _record(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.cursor_factory = _Recording

        engine.dispose()  # every connection from now on records
        run_as_distributed(app)
        statements: list[str] = []
        _Recording.statements = statements
        yield client, statements


def _post(client: TestClient, *events: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.post("/v1/events", json={"events": list(events)})
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def test_no_statement_does_what_citus_refuses(recorded: tuple[TestClient, list[str]]) -> None:
    client, statements = recorded
    app = client.app
    factory: sessionmaker[Session] = app.state.session_factory  # type: ignore[attr-defined]
    # Leads arrive, in batches that touch several of them (locked together on PostgreSQL).
    people = [f"p{n}@citus.example" for n in range(4)]
    for person in people:
        stream = qualified_stream(person)
        for item in stream:
            item["id"] = f"{person}-{item['id']}"
        assert {r["status"] for r in _post(client, *stream)} == {"accepted"}
    batch = [make_event("page.viewed", id=f"again-{p}", email=p, minutes=90) for p in people]
    assert {r["status"] for r in _post(client, *batch)} == {"accepted"}
    assert {r["status"] for r in _post(client, *batch)} == {"duplicate"}
    ids = {p: client.get("/v1/leads", params={"email": p}).json()["items"][0]["id"] for p in people}
    # A merge, an erasure, an API update.
    merged = client.post(
        f"/v1/leads/{ids[people[0]]}/merge", json={"other_lead_id": ids[people[1]]}
    )
    assert merged.status_code == 200, merged.text
    assert client.delete(f"/v1/leads/{ids[people[2]]}").status_code == 204
    patched = client.patch(f"/v1/leads/{ids[people[3]]}", json={"attributes": {"employees": 9}})
    assert patched.status_code == 200, patched.text
    # The worker's claims: time-driven rescoring, timers, a rep's open leads.
    later = utcnow() + timedelta(days=400)
    registry = app.state.registry.current()  # type: ignore[attr-defined]
    assert freshness.refresh_due(factory, registry, later) >= 1
    timers_service.tick(factory, later)
    with factory() as session, session.begin():
        session.execute(text("UPDATE leads SET owner = 'rep_1', stage = 'mql'"))
    with factory() as session, session.begin():
        assert {lead.id for lead in reps_repo.open_leads(session, "rep_1")} == {
            ids[people[0]],
            ids[people[3]],
        }

    distributed = {place.table: place.column for place in PLACES if place.distributed}
    locks = [s for s in statements if "FOR UPDATE" in s.upper()]
    updates = [s for s in statements if s.lstrip().upper().startswith("UPDATE")]
    assert any(re.search(r"\bleads\.id = ", s) for s in locks), "no per-lead lock recorded"
    assert updates and any("DELETE FROM events" in s for s in statements)
    for statement in locks:
        for table in _tables(statement):
            column = distributed.get(table)
            if column is not None:
                assert re.search(rf"\b{table}\.{column} = %", statement), (
                    f"FOR UPDATE on {table} must name one {column}: {statement}"
                )
                assert not re.search(rf"\b{table}\.{column} IN\b", statement), statement
    for statement in updates:
        match = re.match(
            r"\s*UPDATE\s+\"?(\w+)\"?\s+SET\s+(.*?)(\sFROM\s|\sWHERE\s|$)", statement, re.S
        )
        assert match is not None, statement
        table, assignments = match.group(1), match.group(2)
        column = distributed.get(table)
        if column is not None:
            assert not re.search(rf"(^|,)\s*\"?{column}\"?\s*=", assignments), (
                f"UPDATE of the distribution column {table}.{column}: {statement}"
            )
    for statement in statements:
        if "unnest(" in statement:
            assert not set(_tables(statement)) & set(distributed), (
                f"a bulk statement Citus cannot route: {statement}"
            )


def _tables(statement: str) -> list[str]:
    return re.findall(r"\b(?:FROM|JOIN|UPDATE|INTO)\s+\"?(\w+)\"?", statement, re.IGNORECASE)


# -- the idempotency a user sees ---------------------------------------------------------------


def test_a_retry_after_a_merge_is_still_a_duplicate(client: TestClient) -> None:
    [first] = _post(client, make_event("form.submitted", id="m-1", email="m1@x.it"))
    [second] = _post(client, make_event("page.viewed", id="m-2", email="m2@x.it"))
    merged = client.post(
        f"/v1/leads/{first['lead_id']}/merge", json={"other_lead_id": second["lead_id"]}
    )
    assert merged.status_code == 200, merged.text
    again = _post(
        client,
        make_event("page.viewed", id="m-2", email="m2@x.it"),
        make_event("form.submitted", id="m-1", email="m1@x.it"),
    )
    assert [(r["status"], r["lead_id"]) for r in again] == [
        ("duplicate", first["lead_id"]),
        ("duplicate", first["lead_id"]),
    ]


def test_an_event_id_is_unique_per_person(client: TestClient) -> None:
    """Two sources that number their events alike do not swallow each other's people."""
    [anna] = _post(client, make_event("form.submitted", id="42", email="anna@x.it"))
    [bruno] = _post(client, make_event("form.submitted", id="42", email="bruno@x.it"))
    assert anna["status"] == bruno["status"] == "accepted"
    assert anna["lead_id"] != bruno["lead_id"]
    # Merged into one person, the event is theirs once.
    merged = client.post(
        f"/v1/leads/{anna['lead_id']}/merge", json={"other_lead_id": bruno["lead_id"]}
    )
    assert merged.status_code == 200, merged.text
    history = client.get(f"/v1/leads/{anna['lead_id']}/history").json()["items"]
    assert sum(item["event_ids"].count("42") for item in history if item["event_ids"]) >= 1
    [again] = _post(client, make_event("form.submitted", id="42", email="bruno@x.it"))
    assert (again["status"], again["lead_id"]) == ("duplicate", anna["lead_id"])


def test_the_same_event_sent_at_once_to_two_replicas_is_stored_once(pg_url: str) -> None:
    """Real threads, two engines, one existing lead and one new one, on PostgreSQL."""
    import threading

    from fastapi import FastAPI
    from tests.conftest import TEST_ADMIN_KEY, make_settings

    from leadscore_api.app import create_app

    upgrade_database(pg_url)
    replicas: list[FastAPI] = [create_app(make_settings(pg_url)) for _ in range(2)]
    headers = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}
    with (
        TestClient(replicas[0], headers=headers) as one,
        TestClient(replicas[1], headers=headers) as two,
    ):
        _post(
            one,
            make_event(
                "form.submitted", id="known-0", email="known@x.it", attributes=BIG_MANUFACTURER
            ),
        )
        for round_ in range(5):
            twins = [
                make_event("page.viewed", id=f"twin-{round_}", email="known@x.it", minutes=5),
                make_event("page.viewed", id=f"new-{round_}", email=f"new{round_}@x.it"),
            ]
            answers: list[list[dict[str, Any]]] = []
            barrier = threading.Barrier(2)
            threads = [
                threading.Thread(target=_send_together, args=(c, twins, barrier, answers))
                for c in (one, two)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for position in range(2):
                statuses = sorted(answer[position]["status"] for answer in answers)
                assert statuses == ["accepted", "duplicate"], (round_, answers)
                assert len({answer[position]["lead_id"] for answer in answers}) == 1
        engine = make_engine(pg_url, poolclass=NullPool)
        try:
            with engine.connect() as connection:
                counts = connection.execute(
                    text("SELECT id, count(*) FROM events GROUP BY id HAVING count(*) > 1")
                ).all()
                assert counts == []
                total = connection.scalar(text("SELECT count(*) FROM events"))
                assert total == 1 + 5 * 2
        finally:
            engine.dispose()


def _send_together(
    client: TestClient,
    events: list[dict[str, Any]],
    barrier: Any,
    answers: list[list[dict[str, Any]]],
) -> None:
    barrier.wait()
    answers.append(_post(client, *events))


# -- the migration keeps the data ----------------------------------------------------------------

_COUNTED = (
    "leads",
    "lead_identities",
    "events",
    "score_changes",
    "report_history",
    "outcomes",
    "lead_timers",
    "lead_scores",
)


def _counts(url: str) -> dict[str, int]:
    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return {
                table: int(connection.scalar(text(f"SELECT count(*) FROM {table}")) or 0)
                for table in _COUNTED
            }
    finally:
        engine.dispose()


def test_a_database_with_data_moves_to_the_new_keys_and_back(
    client: TestClient, database_url: str
) -> None:
    from alembic import command

    from leadscore_api.storage.migrate import alembic_config

    for person in ("k1@x.it", "k2@x.it"):
        stream = qualified_stream(person)
        for item in stream:
            item["id"] = f"{person}-{item['id']}"
        stream.append(make_event("deal.won", id=f"{person}-won", email=person, minutes=60))
        _post(client, *stream)
    lead_id = client.get("/v1/leads", params={"email": "k1@x.it"}).json()["items"][0]["id"]
    history = client.get(f"/v1/leads/{lead_id}/history").json()
    before = _counts(database_url)
    assert all(before.values()), before

    engine = make_engine(database_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            config = alembic_config(database_url)
            config.attributes["connection"] = connection
            command.downgrade(config, "0013_announced_stages")
    finally:
        engine.dispose()
    assert _counts(database_url) == before
    upgrade_database(database_url)
    assert _counts(database_url) == before

    assert client.get(f"/v1/leads/{lead_id}/history").json() == history
    retry = _post(client, make_event("deal.won", id="k1@x.it-won", email="k1@x.it", minutes=60))
    assert [(r["status"], r["lead_id"]) for r in retry] == [("duplicate", lead_id)]
    [fresh] = _post(client, make_event("page.viewed", email="k1@x.it", minutes=70))
    assert (fresh["status"], fresh["lead_id"]) == ("accepted", lead_id)
