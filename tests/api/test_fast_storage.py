"""The ingest hot path's driver-level statements store exactly what SQLAlchemy's Core stored.

Each write is done twice into the same tables, once through SQLAlchemy (``connection.execute``
of a Core statement, as the code did before ``storage/fast_sql.py``) and once through the
repository function that now uses the DBAPI cursor; the two rows are then read back through
the ORM and compared column by column, and compared again as the text the database holds.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Table, Text, cast, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.storage.base import Base
from leadscore_api.storage.delivery_models import LeadTimer
from leadscore_api.storage.models import Event, Lead, LeadIdentity, LeadScore, Outcome, ScoreChange
from leadscore_api.storage.repositories import leads as leads_repo
from leadscore_api.storage.repositories import snapshots as snapshots_repo
from leadscore_api.storage.repositories import timers as timers_repo
from leadscore_api.storage.repositories.leads import LeadData, ScoreData
from leadscore_api.storage.snapshot_models import ScoreSnapshot
from leadscore_api.storage.unit_of_work import RetryTransaction

#: Not UTC, with microseconds: both must come back as the same instant, aware, in UTC.
ROME = timezone(timedelta(hours=1))
AT = datetime(2026, 11, 26, 21, 30, 15, 123456, tzinfo=ROME)
LATER = datetime(2026, 12, 1, 8, 0, 0, 7, tzinfo=UTC)
#: A whole second: SQLAlchemy still stores ``.000000`` on SQLite.
WHOLE = datetime(2026, 11, 30, 9, 0, tzinfo=ROME)
#: Integers beyond 64 bits (orjson cannot write them) and text beyond ASCII.
ATTRIBUTES: dict[str, Any] = {
    "crm_id": 2**70 + 3,
    "debt": -(2**65),
    "città": "Forlì — “Perché no?” €",
    "nested": {"values": [1, 2.5, None, True, "ß"], "empty": {}},
}
SUMMARY: dict[str, Any] = {"score": 42, "tier": "warm", "components": {"fit": 30.25}}


def _lead(lead_id: str, email: str) -> dict[str, Any]:
    return {
        "id": lead_id,
        "email": email,
        "external_id": f"crm-{2**70}",
        "attributes": ATTRIBUTES,
        "letter": "B",
        "score": 42,
        "tier": "warm",
        "stage": "mql",
        "components": {"fit": 30.25, "engagement": 11.75},
        "next_action": "Chiamare entro 24 ore",
        "next_action_due": WHOLE,
        "owner": "Zoë",
        "team": "nord",
        "ruleset_name": "b2b",
        "ruleset_version": 3,
        "models": {"other": {**SUMMARY, "ruleset": {"name": "other", "version": 1}}},
        "created_at": AT,
        "updated_at": LATER,
        "version": 1,
        "next_change_at": None,
        "announced_stages": ["mql"],
    }


def _event(event_id: str, lead_id: str) -> dict[str, Any]:
    return {
        "id": event_id,
        "lead_id": lead_id,
        "type": "form.submitted",
        "known_type": True,
        "occurred_at": AT,
        "received_at": LATER,
        "source": "api",
        "properties": {"url": "/prezzi?città=Forlì", "big": 2**64},
        "attributes": ATTRIBUTES,
        "raw": None,
    }


def _history(lead_id: str) -> dict[str, Any]:
    return {
        "lead_id": lead_id,
        "ruleset_name": "b2b",
        "ruleset_version": 3,
        "ruleset_sha256": "ab" * 32,
        "cause": "event",
        "event_id": f"{lead_id}-e",
        "event_ids": [f"{lead_id}-e"],
        "changed_at": AT,
        "previous": None,
        "current": SUMMARY,
        "explanation": {"because": "è arrivato un modulo", "big": 2**66},
    }


def _score(lead_id: str) -> dict[str, Any]:
    return {
        "lead_id": lead_id,
        "ruleset_name": "b2b",
        "ruleset_version": 3,
        "ruleset_sha256": "cd" * 32,
        "state": {"n_events": 1, "attributes": ATTRIBUTES},
        "summary": SUMMARY,
        "version": 1,
        "updated_at": AT,
    }


def _snapshot(lead_id: str) -> dict[str, Any]:
    return {
        "lead_id": lead_id,
        "ruleset_name": "b2b",
        "n_events": 200,
        "ruleset_sha256": "cd" * 32,
        "event_occurred_at": AT,
        "event_id": f"{lead_id}-e",
        "state": {"n_events": 200, "attributes": ATTRIBUTES},
    }


#: Columns that name the row itself (keys differ between the two copies by construction).
_KEYS = {"id", "lead_id", "email", "event_id", "event_ids"}


def _orm_values(row: Any, table: Table) -> dict[str, Any]:
    return {c.name: getattr(row, c.name) for c in table.columns if c.name not in _KEYS}


def _stored_text(session: Session, table: Table, where: Any) -> dict[str, Any]:
    """Every column as the text the database holds (JSON text, timestamp text)."""
    names = [c.name for c in table.columns if c.name not in _KEYS]
    row = session.execute(select(*[cast(table.c[n], Text) for n in names]).where(where)).one()
    return dict(zip(names, row, strict=True))


def _assert_same(orm_a: dict[str, Any], orm_b: dict[str, Any]) -> None:
    assert orm_a == orm_b
    for value in orm_a.values():
        if isinstance(value, datetime):
            assert value.tzinfo is not None and value.utcoffset() == timedelta(0)


def _table(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


def _write_both_ways(session: Session) -> None:
    """Rows ``a`` through SQLAlchemy Core, rows ``b`` through the repositories' fast path."""
    connection = session.connection()
    connection.execute(insert(_table(Lead)), [_lead("lead_a", "a@x.it")])
    leads_repo.insert_leads(session, [LeadData(**_lead("lead_b", "b@x.it"))])
    identity = {"kind": "email", "created_at": AT}
    connection.execute(
        insert(_table(LeadIdentity)), [{**identity, "value": "a@x.it", "lead_id": "lead_a"}]
    )
    leads_repo.insert_identities(session, [{**identity, "value": "b@x.it", "lead_id": "lead_b"}])
    connection.execute(insert(_table(Event)), [_event("lead_a-e", "lead_a")])
    leads_repo.insert_events(session, [_event("lead_b-e", "lead_b")])
    connection.execute(insert(_table(ScoreChange)), [_history("lead_a")])
    leads_repo.insert_history(session, [_history("lead_b")])
    connection.execute(insert(_table(LeadScore)), [_score("lead_a")])
    leads_repo.write_scores(session, [ScoreData(**{**_score("lead_b"), "is_new": True})])
    connection.execute(insert(_table(ScoreSnapshot)), [_snapshot("lead_a")])
    snapshots_repo.insert_snapshots(session, [_snapshot("lead_b")])
    detail = {"sla": "prima chiamata", "every": None, "big": 2**65}
    timer = {"lead_id": "lead_a", "ruleset_name": "b2b", "detail": detail, "fired_at": None}
    connection.execute(
        insert(_table(LeadTimer)),
        [{**timer, "kind": "sla:1", "due_at": AT}, {**timer, "kind": "sla:2", "due_at": LATER}],
    )
    timers_repo.write_timers(
        session,
        [timers_repo.TimerPlan("lead_b", "b2b", {"sla:1": (AT, detail), "sla:2": (LATER, detail)})],
    )


def _compare(session: Session, model: type[Base], key: Any, a: Any, b: Any) -> None:
    table = _table(model)
    rows = {
        getattr(row, key.key): row
        for row in session.scalars(select(model).where(key.in_([a, b])).order_by(key))
    }
    _assert_same(_orm_values(rows[a], table), _orm_values(rows[b], table))
    assert _stored_text(session, table, key == a) == _stored_text(session, table, key == b)


def test_fast_writes_store_what_sqlalchemy_stored(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as session, session.begin():
        _write_both_ways(session)
    with session_factory() as session:
        _compare(session, Lead, Lead.id, "lead_a", "lead_b")
        _compare(session, Event, Event.lead_id, "lead_a", "lead_b")
        _compare(session, ScoreChange, ScoreChange.lead_id, "lead_a", "lead_b")
        _compare(session, LeadScore, LeadScore.lead_id, "lead_a", "lead_b")
        _compare(session, ScoreSnapshot, ScoreSnapshot.lead_id, "lead_a", "lead_b")
        timers = {
            (t.lead_id, t.kind): t
            for t in session.scalars(select(LeadTimer).order_by(LeadTimer.kind))
        }
        for kind in ("sla:1", "sla:2"):
            table = _table(LeadTimer)
            _assert_same(
                _orm_values(timers[("lead_a", kind)], table),
                _orm_values(timers[("lead_b", kind)], table),
            )
        lead = session.get(Lead, "lead_b")
        assert lead is not None
        assert lead.attributes == ATTRIBUTES
        assert lead.attributes["crm_id"] == 2**70 + 3
        assert lead.created_at == AT and lead.next_change_at is None


def test_fast_updates_store_what_sqlalchemy_stored(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as session, session.begin():
        _write_both_ways(session)
        # Lead c is updated with lead b in one call: one statement for both on PostgreSQL.
        leads_repo.insert_leads(session, [LeadData(**_lead("lead_c", "c@x.it"))])
        leads_repo.write_scores(session, [ScoreData(**{**_score("lead_c"), "is_new": True})])
    changed = {
        "attributes": {**ATTRIBUTES, "nuovo": "sì", "huge": 10**30},
        "components": {"fit": 1.5},
        "next_action_due": LATER,
        "next_change_at": AT,
        "updated_at": AT + timedelta(microseconds=1),
        "models": {},
        "score": 7,
        "announced_stages": ["mql", "sql"],
    }
    with session_factory() as session, session.begin():
        # Lead a through SQLAlchemy with the repository's own UPDATE, lead b through the cursor.
        row_a = {**_lead("lead_a", "a@x.it"), **changed}
        params = {f: row_a[f] for f in leads_repo._LEAD_FIELDS}
        session.connection().execute(
            leads_repo._lead_update(leads_repo._INDEXED_LEAD_FIELDS).statement,
            [{"b_id": "lead_a", "b_version": 1, "new_version": 2, **params}],
        )
        lead_b = LeadData(**{**_lead("lead_b", "b@x.it"), **changed}, dirty=True)
        lead_c = LeadData(**{**_lead("lead_c", "c@x.it"), **changed}, dirty=True)
        leads_repo.write_leads(session, [lead_b, lead_c])
        assert lead_b.version == lead_c.version == 2
        score_a = {**_score("lead_a"), "state": {"n_events": 2}, "updated_at": LATER}
        session.connection().execute(
            leads_repo._FAST_UPDATE_SCORES.statement,
            [
                {
                    "b_lead_id": "lead_a",
                    "b_name": "b2b",
                    "b_version": 1,
                    "new_version": 2,
                    **{f: score_a[f] for f in leads_repo._SCORE_FIELDS},
                }
            ],
        )
        leads_repo.write_scores(
            session,
            [
                ScoreData(**{**_score(lead_id), "state": {"n_events": 2}, "updated_at": LATER})
                for lead_id in ("lead_b", "lead_c")
            ],
        )
    with session_factory() as session:
        for fast in ("lead_b", "lead_c"):
            _compare(session, Lead, Lead.id, "lead_a", fast)
            _compare(session, LeadScore, LeadScore.lead_id, "lead_a", fast)
            lead = session.get(Lead, fast)
            assert lead is not None and lead.version == 2
            assert lead.attributes["huge"] == 10**30


def test_an_update_of_many_rows_that_meets_a_changed_row_is_retried_whole(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as session, session.begin():
        leads_repo.insert_leads(
            session, [LeadData(**_lead(f"lead_{n}", f"{n}@x.it")) for n in range(3)]
        )
    with pytest.raises(RetryTransaction), session_factory() as session, session.begin():
        leads = [
            LeadData(**{**_lead(f"lead_{n}", f"{n}@x.it"), "score": 9}, dirty=True)
            for n in range(3)
        ]
        leads[1].version = 7  # another writer moved it on meanwhile
        leads_repo.write_leads(session, leads)
    with session_factory() as session:
        assert {lead.score for lead in session.scalars(select(Lead))} == {42}


def test_fast_reads_return_what_the_orm_reads(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session, session.begin():
        _write_both_ways(session)
    with session_factory() as session, session.begin():
        locked = leads_repo.lock_leads(session, ["lead_b", "lead_a", "missing"])
        scores = leads_repo.load_scores(session, ["lead_a", "lead_b"])
        stored, known = leads_repo.lookup(
            session,
            [("lead_b-e", "b@x.it", None), ("nope", "a@x.it", None), ("new", "c@x.it", None)],
        )
        orm_leads = {lead.id: lead for lead in session.scalars(select(Lead))}
        orm_scores = {s.lead_id: s for s in session.scalars(select(LeadScore))}
    assert sorted(locked) == ["lead_a", "lead_b"]
    lead_table, score_table = _table(Lead), _table(LeadScore)
    for lead_id in ("lead_a", "lead_b"):
        fast = locked[lead_id]
        for column in lead_table.columns:
            assert getattr(fast, column.name) == getattr(orm_leads[lead_id], column.name)
        assert fast.created_at.tzinfo is not None and fast.attributes == ATTRIBUTES
        row = scores[lead_id]["b2b"]
        for column in score_table.columns:
            assert getattr(row, column.name) == getattr(orm_scores[lead_id], column.name)
    assert stored == {"lead_b-e": "lead_b"}
    assert known == {("email", "a@x.it"): "lead_a", ("email", "b@x.it"): "lead_b"}


def test_a_duplicate_row_is_the_error_the_unit_of_work_retries(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as session, session.begin():
        leads_repo.insert_leads(session, [LeadData(**_lead("lead_b", "b@x.it"))])
        leads_repo.insert_events(session, [_event("same-id", "lead_b")])
    with pytest.raises(IntegrityError), session_factory() as session, session.begin():
        leads_repo.insert_events(session, [_event("same-id", "lead_b")])


def test_rows_inserted_together_store_what_sqlalchemy_stored(
    session_factory: sessionmaker[Session],
) -> None:
    """Several rows of a table in one driver call: each keeps its own values."""

    def events(prefix: str, lead_id: str) -> list[dict[str, Any]]:
        return [
            {
                **_event(f"{prefix}-{k}", lead_id),
                "occurred_at": AT + timedelta(seconds=k),
                "properties": {"k": k, "big": 2**64 + k, "testo": "è" * k},
            }
            for k in range(3)
        ]

    with session_factory() as session, session.begin():
        connection = session.connection()
        connection.execute(insert(_table(Lead)), [_lead("lead_a", "a@x.it")])
        leads_repo.insert_leads(
            session,
            [LeadData(**_lead("lead_b", "b@x.it")), LeadData(**_lead("lead_c", "c@x.it"))],
        )
        connection.execute(insert(_table(Event)), events("sa", "lead_a"))
        leads_repo.insert_events(session, events("fast", "lead_b"))
    with session_factory() as session:
        _compare(session, Lead, Lead.id, "lead_a", "lead_c")
        for k in range(3):
            _compare(session, Event, Event.id, f"sa-{k}", f"fast-{k}")
        fast = session.get(Event, ("lead_b", "fast-2"))
        assert fast is not None and fast.properties["big"] == 2**64 + 2


def test_fast_inserts_of_many_rows_store_what_sqlalchemy_stored(
    session_factory: sessionmaker[Session],
) -> None:
    """Several rows per call (one statement on PostgreSQL), in order, JSON nulls included."""
    history = [
        {**_history(lead), "previous": None if n == 0 else SUMMARY, "event_id": None}
        for n, lead in enumerate(["lead_a"] * 3)
    ]
    outcomes: list[dict[str, Any]] = [
        {"event_id": f"o{n}", "type": "deal.won", "occurred_at": AT, "source": None, "amount": a}
        for n, a in enumerate([100, 2.5, None])
    ]
    with session_factory() as session, session.begin():
        leads_repo.insert_leads(
            session, [LeadData(**_lead(lead, f"{lead}@x.it")) for lead in ("lead_a", "lead_b")]
        )
        connection = session.connection()
        connection.execute(insert(_table(ScoreChange)), history)
        leads_repo.insert_history(session, [{**row, "lead_id": "lead_b"} for row in history])
        connection.execute(insert(_table(Event)), [_event(f"a{n}", "lead_a") for n in range(3)])
        leads_repo.insert_events(session, [_event(f"b{n}", "lead_b") for n in range(3)])
        connection.execute(
            insert(_table(Outcome)), [{**row, "lead_id": "lead_a"} for row in outcomes]
        )
        leads_repo.insert_outcomes(
            session,
            [{**row, "event_id": "b" + row["event_id"], "lead_id": "lead_b"} for row in outcomes],
        )
    with session_factory() as session:
        for model, order in (
            (ScoreChange, ScoreChange.id),
            (Event, Event.id),
            (Outcome, Outcome.id),
        ):
            table = _table(model)
            names = [c.name for c in table.columns if c.name not in _KEYS | {"event_id"}]
            by_lead: dict[str, list[Any]] = {"lead_a": [], "lead_b": []}
            for row in session.execute(
                select(table.c.lead_id, *[cast(table.c[n], Text) for n in names]).order_by(order)
            ):
                by_lead[row[0]].append(tuple(row[1:]))
            assert len(by_lead["lead_a"]) == 3
            assert by_lead["lead_a"] == by_lead["lead_b"], model.__name__


def test_a_locked_lead_written_back_keeps_every_column_whichever_changed(
    session_factory: sessionmaker[Session],
) -> None:
    """On SQLite a lead's update names only the indexed columns that changed since it was
    read (or last written): what is read back is the object, column for column, either way."""
    with session_factory() as session, session.begin():
        leads_repo.insert_leads(session, [LeadData(**_lead("lead_n", "n@x.it"))])
    steps: list[dict[str, Any]] = [
        {"score": 43, "updated_at": LATER + timedelta(seconds=1), "components": {"fit": 2.0}},
        {"tier": "hot", "score": 80, "next_change_at": AT},
        {"owner": None, "team": None, "letter": "A", "attributes": {"role": "CEO"}},
        {"owner": "Zoë", "team": "nord", "letter": "B"},
        {"email": "nuovo@x.it", "external_id": None, "stage": "sql", "next_change_at": None},
    ]
    expected = _lead("lead_n", "n@x.it")
    for number, change in enumerate(steps):
        with session_factory() as session, session.begin():
            lead = leads_repo.lock_leads(session, ["lead_n"])["lead_n"]
            for name, value in change.items():
                setattr(lead, name, value)
            lead.dirty = True
            leads_repo.write_leads(session, [lead])
            expected.update(change)
            if number == 2:  # written twice in one transaction, back to the value first read
                lead.owner, lead.dirty = "Zoë", True
                leads_repo.write_leads(session, [lead])
                expected["owner"] = "Zoë"
        with session_factory() as session:
            stored = leads_repo.lock_leads(session, ["lead_n"])["lead_n"]
        expected["version"] = stored.version
        assert {f: getattr(stored, f) for f in expected} == expected, change
    assert stored.version == 1 + len(steps) + 1
