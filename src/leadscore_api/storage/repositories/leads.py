"""SQL of the lead aggregate: leads, identities, events, outcomes, scores and history.

Statements are built once: building them per request (clause coercion, cache keys) cost more
than executing them. They are Core statements on the tables, run on the session's connection,
so that no ORM bulk-persistence or unit-of-work machinery sits in the hot path of ingestion;
the CRM reads and the rarer writes (merge, erasure) use the ORM models.

Concurrent writers to one lead are serialised by a lock on its ``leads`` row (``SELECT ... FOR
UPDATE`` on PostgreSQL; SQLite serialises every write transaction with ``BEGIN IMMEDIATE``),
and the rows also carry a version number, so a lost update is impossible rather than unlikely.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    Connection,
    String,
    Table,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.orm import Session

from leadscore_api.scoring import ScoringEvent
from leadscore_api.storage.base import Base
from leadscore_api.storage.distribution import is_distributed
from leadscore_api.storage.fast_sql import BulkUpdate, FastInsert, FastStatement
from leadscore_api.storage.models import (
    IDENTITY_EMAIL,
    IDENTITY_EXTERNAL_ID,
    Erasure,
    Event,
    Lead,
    LeadIdentity,
    LeadScore,
    Outcome,
    ScoreChange,
)
from leadscore_api.storage.repositories import snapshots as snapshots_repo
from leadscore_api.storage.unit_of_work import RetryTransaction

LEADS_TABLE: Table = Base.metadata.tables["leads"]
SCORES_TABLE: Table = Base.metadata.tables["lead_scores"]
EVENTS_TABLE: Table = Base.metadata.tables["events"]
IDENTITIES_TABLE: Table = Base.metadata.tables["lead_identities"]
HISTORY_TABLE: Table = Base.metadata.tables["score_changes"]
OUTCOMES_TABLE: Table = Base.metadata.tables["outcomes"]
#: Rows per IN (...) list: far below SQLite's and PostgreSQL's parameter limits.
_CHUNK = 500


@dataclass(eq=False)
class LeadData:
    """A locked ``leads`` row, changed in memory and written back in one statement per request.

    Plain objects instead of ORM instances keep a batch of 100 events to a dozen SQL
    statements (executemany) instead of several per event.
    """

    id: str
    email: str | None
    external_id: str | None
    attributes: dict[str, Any]
    letter: str | None
    score: int
    tier: str | None
    stage: str
    components: dict[str, Any]
    next_action: str | None
    next_action_due: datetime | None
    owner: str | None
    ruleset_name: str | None
    ruleset_version: int | None
    models: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    version: int
    next_change_at: datetime | None = None
    team: str | None = None
    announced_stages: list[str] = field(default_factory=list)
    dirty: bool = False
    #: The indexed columns' values as stored (``_INDEXED_LEAD_FIELDS``); None: write them all.
    stored: tuple[Any, ...] | None = None


@dataclass(eq=False)
class ScoreData:
    """A ``lead_scores`` row: the core's incremental state of one lead under one ruleset."""

    lead_id: str
    ruleset_name: str
    ruleset_version: int
    ruleset_sha256: str
    state: dict[str, Any]
    summary: dict[str, Any]
    version: int
    updated_at: datetime
    is_new: bool = False


_LEAD_FIELDS = (
    "email",
    "external_id",
    "attributes",
    "letter",
    "score",
    "tier",
    "stage",
    "components",
    "next_action",
    "next_action_due",
    "owner",
    "ruleset_name",
    "ruleset_version",
    "models",
    "created_at",
    "updated_at",
    "next_change_at",
    "team",
    "announced_stages",
)
#: The lead columns an index covers. SQLite rewrites the index entries of every indexed
#: column an UPDATE names, changed or not, so a lead's update names these only when they
#: changed: naming all ten cost three times as much per row (measured on the bench's leads).
_INDEXED_LEAD_FIELDS = tuple(
    f for f in _LEAD_FIELDS if any(f in index.columns for index in LEADS_TABLE.indexes)
)
_PLAIN_LEAD_FIELDS = tuple(f for f in _LEAD_FIELDS if f not in _INDEXED_LEAD_FIELDS)
_SCORE_FIELDS = ("ruleset_version", "ruleset_sha256", "state", "summary", "updated_at")


def new_lead(lead_id: str, email: str | None, external_id: str | None, now: datetime) -> LeadData:
    return LeadData(
        id=lead_id,
        email=email,
        external_id=external_id,
        attributes={},
        letter=None,
        score=0,
        tier=None,
        stage="lead",
        components={},
        next_action=None,
        next_action_due=None,
        owner=None,
        ruleset_name=None,
        ruleset_version=None,
        models={},
        created_at=now,
        updated_at=now,
        version=1,
    )


# Statements are built once: building them per request (clause coercion, cache keys) cost


_LOCK_LEADS = (
    select(LEADS_TABLE)
    .where(LEADS_TABLE.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(LEADS_TABLE.c.id)
    .with_for_update()
)
#: One lead, locked: what a distributed database locks in one statement (``is_distributed``).
_LOCK_LEAD = select(LEADS_TABLE).where(LEADS_TABLE.c.id == bindparam("id")).with_for_update()
_LEAD_COLUMNS = tuple(c.name for c in LEADS_TABLE.columns)
_LOAD_SCORES = select(SCORES_TABLE).where(
    SCORES_TABLE.c.lead_id.in_(bindparam("ids", expanding=True))
)
_SCORE_COLUMNS = tuple(c.name for c in SCORES_TABLE.columns)
#: Which leads the given identities belong to: a lookup by the identities' own key.
_LOOKUP_IDENTITIES = union_all(
    select(IDENTITIES_TABLE.c.kind, IDENTITIES_TABLE.c.value, IDENTITIES_TABLE.c.lead_id).where(
        IDENTITIES_TABLE.c.kind == IDENTITY_EMAIL,
        IDENTITIES_TABLE.c.value.in_(bindparam("emails", expanding=True)),
    ),
    select(IDENTITIES_TABLE.c.kind, IDENTITIES_TABLE.c.value, IDENTITIES_TABLE.c.lead_id).where(
        IDENTITIES_TABLE.c.kind == IDENTITY_EXTERNAL_ID,
        IDENTITIES_TABLE.c.value.in_(bindparam("externals", expanding=True)),
    ),
)
#: Pairs (lead id, event id) per statement when looking for stored events.
_PAIRS = 250


@functools.cache
def _fast_stored_events(pairs: int) -> FastStatement:
    """Which of ``pairs`` (lead id ``l<n>``, event id ``e<n>``) are stored: the events' key.

    Spelled as ``OR``-ed pairs, which SQLite answers with one key lookup per pair (it turns a
    row-value ``IN`` into a scan of a temporary table, and ``lead_id IN (...) AND id IN (...)``
    makes it look up every combination) and a distributed database routes to the leads' nodes
    only. One statement per number of pairs.
    """
    c = EVENTS_TABLE.c
    return FastStatement(
        select(c.id, c.lead_id).where(
            or_(
                *(
                    and_(c.lead_id == bindparam(f"l{n}"), c.id == bindparam(f"e{n}"))
                    for n in range(pairs)
                )
            )
        )
    )


_KEYS = (
    func.unnest(
        bindparam("kinds", type_=ARRAY(String(20))),
        bindparam("values", type_=ARRAY(String(320))),
        bindparam("event_ids", type_=ARRAY(String(200))),
    )
    .table_valued("kind", "value", "event_id")
    .render_derived()
)
#: On PostgreSQL both in one statement: each (identity, event id) of the request as three
#: arrays, joined to the identity's key and then, by the identity's lead, to the event's key.
#: One round trip, as before the key included the lead (each statement cost about 0.1 ms of
#: client CPU on the test machine, measured); a distributed database cannot route it.
_FAST_LOOKUP_PG = FastStatement(
    select(
        IDENTITIES_TABLE.c.kind,
        IDENTITIES_TABLE.c.value,
        IDENTITIES_TABLE.c.lead_id,
        EVENTS_TABLE.c.id,
    ).select_from(
        _KEYS.join(
            IDENTITIES_TABLE,
            and_(
                IDENTITIES_TABLE.c.kind == _KEYS.c.kind,
                IDENTITIES_TABLE.c.value == _KEYS.c.value,
            ),
        ).outerjoin(
            EVENTS_TABLE,
            and_(
                EVENTS_TABLE.c.lead_id == IDENTITIES_TABLE.c.lead_id,
                EVENTS_TABLE.c.id == _KEYS.c.event_id,
            ),
        )
    )
)


def _stored_events(session: Session, pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The event ids of ``pairs`` (lead id, event id) that are stored, to their lead."""
    stored: dict[str, str] = {}
    for start in range(0, len(pairs), _PAIRS):
        part = pairs[start : start + _PAIRS]
        values: dict[str, str] = {}
        for n, (lead_id, event_id) in enumerate(part):
            values[f"l{n}"] = lead_id
            values[f"e{n}"] = event_id
        stored.update(_fast_stored_events(len(part)).execute(session, values))
    return stored


# The same statements on the DBAPI cursor (``storage/fast_sql.py``): these run in every ingest.
_FAST_INSERT_LEADS = FastInsert(LEADS_TABLE)
_FAST_INSERT_EVENTS = FastInsert(EVENTS_TABLE)
_FAST_INSERT_IDENTITIES = FastInsert(IDENTITIES_TABLE)
_FAST_INSERT_OUTCOMES = FastInsert(OUTCOMES_TABLE)
_FAST_INSERT_HISTORY = FastInsert(HISTORY_TABLE)
_FAST_INSERT_SCORES = FastInsert(SCORES_TABLE)
_FAST_UPDATE_SCORES = BulkUpdate(
    SCORES_TABLE,
    [("b_lead_id", "lead_id"), ("b_name", "ruleset_name"), ("b_version", "version")],
    [("version", "new_version"), *((f, f) for f in _SCORE_FIELDS)],
)
_FAST_LOCK_LEADS = FastStatement(_LOCK_LEADS)
_FAST_LOCK_LEAD = FastStatement(_LOCK_LEAD)
_FAST_LOAD_SCORES = FastStatement(_LOAD_SCORES)
_FAST_LOOKUP_IDENTITIES = FastStatement(_LOOKUP_IDENTITIES)


def chunks(values: Sequence[str]) -> Iterable[list[str]]:
    for start in range(0, len(values), _CHUNK):
        yield list(values[start : start + _CHUNK])


def _indexed_values(lead: LeadData) -> tuple[Any, ...]:
    return tuple(getattr(lead, f) for f in _INDEXED_LEAD_FIELDS)


def insert_leads(session: Session, leads: Iterable[LeadData]) -> None:
    rows = []
    for lead in leads:
        rows.append(
            {"id": lead.id, "version": lead.version, **{f: getattr(lead, f) for f in _LEAD_FIELDS}}
        )
        lead.stored = _indexed_values(lead)
    _FAST_INSERT_LEADS.executemany(session, rows)


def _check_rowcount(rowcount: int, expected: int, connection: Connection) -> None:
    if connection.dialect.supports_sane_multi_rowcount and rowcount != expected:
        raise RetryTransaction("a row changed under this transaction (version mismatch)")


def write_leads(session: Session, leads: Iterable[LeadData]) -> None:
    """Write changed leads back, each guarded by its version (a belt on top of the row lock).

    On SQLite an update names only the indexed columns that changed (one statement per set of
    them); PostgreSQL leaves an index alone when its value is unchanged, so there every update
    names every column and a batch stays one statement.
    """
    narrow = session.get_bind().dialect.name == "sqlite"
    by_shape: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for lead in leads:
        if not lead.dirty:
            continue
        current = _indexed_values(lead)
        stored = lead.stored
        if narrow and stored is not None:
            shape = tuple(
                f
                for f, now, then in zip(_INDEXED_LEAD_FIELDS, current, stored, strict=True)
                if now != then
            )
        else:
            shape = _INDEXED_LEAD_FIELDS
        by_shape.setdefault(shape, []).append(
            {
                "b_id": lead.id,
                "b_version": lead.version,
                "new_version": lead.version + 1,
                **{f: getattr(lead, f) for f in _PLAIN_LEAD_FIELDS},
                **{f: getattr(lead, f) for f in shape},
            }
        )
        lead.version += 1
        lead.dirty = False
        lead.stored = current
    for shape, params in by_shape.items():
        rowcount = _lead_update(shape).executemany(session, params)
        _check_rowcount(rowcount, len(params), session.connection())


_LEAD_UPDATES: dict[tuple[str, ...], BulkUpdate] = {}


def _lead_update(indexed: tuple[str, ...]) -> BulkUpdate:
    """The guarded update of a lead's plain columns and of these indexed ones."""
    found = _LEAD_UPDATES.get(indexed)
    if found is None:
        found = _LEAD_UPDATES[indexed] = BulkUpdate(
            LEADS_TABLE,
            [("b_id", "id"), ("b_version", "version")],
            [("version", "new_version"), *((f, f) for f in (*_PLAIN_LEAD_FIELDS, *indexed))],
        )
    return found


def write_scores(session: Session, scores: Iterable[ScoreData]) -> None:
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for row in scores:
        values = {f: getattr(row, f) for f in _SCORE_FIELDS}
        if row.is_new:
            inserts.append(
                {"lead_id": row.lead_id, "ruleset_name": row.ruleset_name, "version": 1, **values}
            )
            row.is_new = False
            row.version = 1
        else:
            updates.append(
                {
                    "b_lead_id": row.lead_id,
                    "b_name": row.ruleset_name,
                    "b_version": row.version,
                    "new_version": row.version + 1,
                    **values,
                }
            )
            row.version += 1
    _FAST_INSERT_SCORES.executemany(session, inserts)
    if updates:
        rowcount = _FAST_UPDATE_SCORES.executemany(session, updates)
        _check_rowcount(rowcount, len(updates), session.connection())


def lock_leads(session: Session, lead_ids: Iterable[str]) -> dict[str, LeadData]:
    """Load and lock leads in id order (one order everywhere, so two requests never deadlock).

    One statement per chunk of leads; one per lead on a distributed database, which locks rows
    of one shard per statement only (``distribution.is_distributed``).
    """
    found: dict[str, LeadData] = {}
    ids = sorted(set(lead_ids))
    if ids and is_distributed(session):
        rows = [row for lead_id in ids for row in _FAST_LOCK_LEAD.execute(session, {"id": lead_id})]
    else:
        rows = [
            row
            for chunk in chunks(ids)
            for row in _FAST_LOCK_LEADS.execute(session, {"ids": chunk})
        ]
    for row in rows:
        lead = LeadData(**dict(zip(_LEAD_COLUMNS, row, strict=True)))
        lead.stored = _indexed_values(lead)
        found[lead.id] = lead
    return found


def load_scores(session: Session, lead_ids: Iterable[str]) -> dict[str, dict[str, ScoreData]]:
    out: dict[str, dict[str, ScoreData]] = defaultdict(dict)
    for chunk in chunks(sorted(set(lead_ids))):
        for row in _FAST_LOAD_SCORES.execute(session, {"ids": chunk}):
            score = ScoreData(**dict(zip(_SCORE_COLUMNS, row, strict=True)))
            out[score.lead_id][score.ruleset_name] = score
    return out


def known_identities(
    session: Session, emails: Sequence[str], externals: Sequence[str]
) -> dict[tuple[str, str], str]:
    """The lead of each of these identities that is stored, by (kind, value)."""
    known: dict[tuple[str, str], str] = {}
    empty: list[str] = []
    if max(len(emails), len(externals)) <= _CHUNK:
        parts = [(list(emails), list(externals))]
    else:
        parts = [(chunk, empty) for chunk in chunks(emails)]
        parts += [(empty, chunk) for chunk in chunks(externals)]
    for part_emails, part_externals in parts:
        params = {"emails": part_emails, "externals": part_externals}
        for kind, value, lead_id in _FAST_LOOKUP_IDENTITIES.execute(session, params):
            known[(kind, value)] = lead_id
    return known


def lookup(
    session: Session, events: Sequence[tuple[str, str | None, str | None]]
) -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    """For events given as (id, email, external id): which are stored (id to their lead), and
    which of their identities are known (to their lead).

    An event id is unique per lead, and is looked for with the leads its own identities belong
    to: a retry names the same person as the original, whose identities lead to the lead that
    stored it (a merge moves events and identities together; an erased person's event ids are
    in the tombstone instead). On PostgreSQL one statement answers both; elsewhere, and on a
    distributed database, the identities are looked up by their own key first, then the events
    of the leads found by theirs (none when every person is new).
    """
    keys = [
        (kind, value, event_id)
        for event_id, email, external in events
        for kind, value in ((IDENTITY_EMAIL, email), (IDENTITY_EXTERNAL_ID, external))
        if value
    ]
    stored: dict[str, str] = {}
    known: dict[tuple[str, str], str] = {}
    if session.get_bind().dialect.name == "postgresql" and not is_distributed(session):
        params = {
            "kinds": [kind for kind, _, _ in keys],
            "values": [value for _, value, _ in keys],
            "event_ids": [event_id for _, _, event_id in keys],
        }
        for kind, value, lead_id, event_id in _FAST_LOOKUP_PG.execute(session, params):
            known[(kind, value)] = lead_id
            if event_id is not None:
                stored[event_id] = lead_id
        return stored, known
    emails = sorted({value for kind, value, _ in keys if kind == IDENTITY_EMAIL})
    externals = sorted({value for kind, value, _ in keys if kind == IDENTITY_EXTERNAL_ID})
    known = known_identities(session, emails, externals)
    pairs = sorted(
        {
            (known[(kind, value)], event_id)
            for kind, value, event_id in keys
            if (kind, value) in known
        }
    )
    return _stored_events(session, pairs), known


def insert_identities(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    _FAST_INSERT_IDENTITIES.executemany(session, rows)


def insert_events(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    _FAST_INSERT_EVENTS.executemany(session, rows)


def insert_outcomes(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    _FAST_INSERT_OUTCOMES.executemany(session, rows)


def insert_history(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    _FAST_INSERT_HISTORY.executemany(session, rows)


def lead_events(
    session: Session, lead_id: str, *, after: tuple[datetime, str] | None = None
) -> list[ScoringEvent]:
    """The stored events of a lead (those after ``after``: occurred_at, id), in the order the
    core applies them: by time, then id in Python's order (a collation may differ)."""
    statement = select(
        Event.id, Event.type, Event.occurred_at, Event.properties, Event.attributes
    ).where(Event.lead_id == lead_id)
    if after is not None:
        statement = statement.where(Event.occurred_at >= after[0])
    events = [
        ScoringEvent(
            id=row.id,
            type=row.type,
            occurred_at=row.occurred_at,
            properties=row.properties or {},
            attributes=row.attributes or {},
        )
        for row in session.execute(statement)
    ]
    if after is not None:
        events = [e for e in events if (e.occurred_at, e.id) > after]
    events.sort(key=lambda e: (e.occurred_at, e.id))
    return events


# -- CRM reads ---------------------------------------------------------------------------------


def get_lead(session: Session, lead_id: str) -> Lead | None:
    return session.get(Lead, lead_id)


@dataclass
class LeadFilters:
    email: str | None = None
    external_id: str | None = None
    tier: str | None = None
    stage: str | None = None
    letter: str | None = None
    min_score: int | None = None
    owner: str | None = None
    updated_since: datetime | None = None


def list_leads(
    session: Session, filters: LeadFilters, after: tuple[datetime, str] | None, limit: int
) -> list[Lead]:
    """Up to ``limit`` leads oldest-updated first, after the (updated_at, id) key ``after``.

    ``filters.email`` must be normalised already: identities are stored normalised.
    """
    statement = select(Lead)
    if filters.email is not None:
        statement = statement.where(
            Lead.id.in_(
                select(LeadIdentity.lead_id).where(
                    LeadIdentity.kind == IDENTITY_EMAIL, LeadIdentity.value == filters.email
                )
            )
        )
    if filters.external_id is not None:
        statement = statement.where(
            Lead.id.in_(
                select(LeadIdentity.lead_id).where(
                    LeadIdentity.kind == IDENTITY_EXTERNAL_ID,
                    LeadIdentity.value == filters.external_id,
                )
            )
        )
    if filters.tier is not None:
        statement = statement.where(Lead.tier == filters.tier)
    if filters.stage is not None:
        statement = statement.where(Lead.stage == filters.stage)
    if filters.letter is not None:
        statement = statement.where(Lead.letter == filters.letter)
    if filters.min_score is not None:
        statement = statement.where(Lead.score >= filters.min_score)
    if filters.owner is not None:
        statement = statement.where(Lead.owner == filters.owner)
    if filters.updated_since is not None:
        statement = statement.where(Lead.updated_at >= filters.updated_since)
    if after is not None:
        after_time, after_id = after
        statement = statement.where(
            or_(
                Lead.updated_at > after_time,
                and_(Lead.updated_at == after_time, Lead.id > after_id),
            )
        )
    statement = statement.order_by(Lead.updated_at, Lead.id).limit(limit)
    return list(session.scalars(statement))


def history(
    session: Session, lead_id: str, after_id: int | None, limit: int
) -> list[tuple[ScoreChange, str | None]]:
    """Up to ``limit`` changes of a lead after ``after_id``, oldest first, with the event type."""
    statement = (
        select(ScoreChange, Event.type)
        .outerjoin(
            Event, and_(Event.lead_id == ScoreChange.lead_id, Event.id == ScoreChange.event_id)
        )
        .where(ScoreChange.lead_id == lead_id)
    )
    if after_id is not None:
        statement = statement.where(ScoreChange.id > after_id)
    statement = statement.order_by(ScoreChange.id).limit(limit)
    return [(change, event_type) for change, event_type in session.execute(statement)]


# -- merge and erasure -------------------------------------------------------------------------


#: The per-lead tables a merge moves, with the columns unique within one lead besides the key.
_MOVED: tuple[tuple[Table, str | None], ...] = (
    (EVENTS_TABLE, "id"),
    (OUTCOMES_TABLE, "event_id"),
    (HISTORY_TABLE, None),
)


def move_lead_rows(session: Session, from_id: str, to_id: str) -> None:
    """Identities, events, outcomes and history of one lead now belong to another.

    Rows keyed by their lead are deleted and inserted again under the other lead, never
    updated: a distributed database keeps each lead's rows on the lead's node and cannot
    change the lead id of a row (``storage/distribution.py``). The rows keep their ids, so the
    history stays in the order it was written. An event the target already has (the same id
    sent for both people) stays once. Identities are keyed by their value, not their lead, and
    are simply repointed.
    """
    session.execute(
        update(IDENTITIES_TABLE).where(IDENTITIES_TABLE.c.lead_id == from_id).values(lead_id=to_id)
    )
    for table, unique in _MOVED:
        rows = [
            dict(row)
            for row in session.execute(select(table).where(table.c.lead_id == from_id)).mappings()
        ]
        if not rows:
            continue
        if unique is not None:
            column = table.c[unique]
            values = [row[unique] for row in rows]
            taken = {
                value
                for chunk in chunks(values)
                for value in session.scalars(
                    select(column).where(table.c.lead_id == to_id, column.in_(chunk))
                )
            }
            rows = [row for row in rows if row[unique] not in taken]
        # Deleted first: SQLite's key of the history is the id alone (storage/dialects.py).
        session.execute(delete(table).where(table.c.lead_id == from_id))
        for row in rows:
            row["lead_id"] = to_id
        if rows:
            session.execute(insert(table), rows)


def delete_lead(session: Session, lead_id: str) -> None:
    """The lead row, its scores and snapshots (its other rows were moved or deleted before)."""
    snapshots_repo.drop_lead(session, lead_id)
    session.execute(delete(LeadScore).where(LeadScore.lead_id == lead_id))
    session.execute(delete(Lead).where(Lead.id == lead_id))


def erase_personal_rows(session: Session, lead_id: str) -> dict[str, int]:
    """Delete what names the person; return how many rows of each kind there were."""
    counts: dict[str, int] = {}
    for name, model in (
        ("events", Event),
        ("identities", LeadIdentity),
        ("score_changes", ScoreChange),
        ("outcomes", Outcome),
    ):
        counts[name] = int(
            session.scalar(select(func.count()).select_from(model).where(model.lead_id == lead_id))
            or 0
        )
        session.execute(delete(model).where(model.lead_id == lead_id))
    snapshots_repo.drop_lead(session, lead_id)
    return counts


def record_erasure(session: Session, erased_at: datetime, counts: dict[str, int]) -> None:
    session.add(Erasure(erased_at=erased_at, **counts))
    session.flush()


def leads_by_ids(session: Session, ids: set[str]) -> dict[str, Lead]:
    return {lead.id: lead for lead in session.scalars(select(Lead).where(Lead.id.in_(ids)))}


def due_for_refresh(session: Session, now: datetime, limit: int) -> list[str]:
    """Ids of leads whose summary time may have changed, oldest due first.

    On PostgreSQL the rows are locked and rows another sweep holds are skipped, so several
    workers share the due leads without handling one twice; SQLite has one writer anyway. A
    distributed database locks one lead per statement: the due leads are read, then each is
    claimed by its id if it is still due and no other sweep holds it.
    """
    due = LEADS_TABLE.c.next_change_at <= now
    query = select(LEADS_TABLE.c.id).where(due).order_by(LEADS_TABLE.c.next_change_at).limit(limit)
    if session.get_bind().dialect.name != "postgresql":
        return list(session.scalars(query))
    if not is_distributed(session):
        return list(session.scalars(query.with_for_update(skip_locked=True)))
    claimed: list[str] = []
    for lead_id in session.scalars(query).all():
        claim = (
            select(LEADS_TABLE.c.id)
            .where(LEADS_TABLE.c.id == lead_id, due)
            .with_for_update(skip_locked=True)
        )
        claimed.extend(session.scalars(claim))
    return claimed
