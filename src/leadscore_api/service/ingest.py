"""Event ingestion: store each event once, score its lead, record the change, queue transitions.

Used by ``POST /v1/events`` and by the inbound-webhook adapters, which build canonical events
from platform payloads and hand them to :func:`run_ingest` (or to :func:`ingest_events` inside a
transaction of their own).

Everything one call does happens in the caller's transaction: events, identities, scores,
history and outbox rows are written together or not at all. Concurrent writers to one lead are
serialised by a lock on its ``leads`` row (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite
serialises every write transaction with ``BEGIN IMMEDIATE``), and the rows also carry a version
number, so a lost update is impossible rather than unlikely. What a concurrent transaction can
still do is win a race to insert the same event id or identity first; that surfaces as a
unique-key error, and :func:`run_ingest` simply runs the whole request again, which then sees
the winner's rows.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import (
    Connection,
    Table,
    bindparam,
    insert,
    literal,
    select,
    union_all,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from leadscore_api.config import Settings
from leadscore_api.delivery.models import Subscription
from leadscore_api.delivery.timers import TimerPlan, plan_timers, write_timers
from leadscore_api.ingest.events import CanonicalEvent
from leadscore_api.scoring import (
    LeadState,
    LoadedRuleset,
    OutOfOrderEvent,
    ScoreResult,
    ScoringEvent,
    Transition,
    transitions_between,
)
from leadscore_api.service.registry import RulesetRegistry
from leadscore_api.storage.base import Base, utcnow
from leadscore_api.storage.ids import new_id
from leadscore_api.storage.models import (
    IDENTITY_EMAIL,
    IDENTITY_EXTERNAL_ID,
    Event,
    Lead,
)

log = logging.getLogger("leadscore.ingest")

#: How far in the future an event may claim to have happened (clock skew between systems).
FUTURE_TOLERANCE = timedelta(minutes=5)
#: CRM outcome events, also kept in ``outcomes`` for KPIs and backtests.
OUTCOME_TYPES = frozenset(
    {"lead.contacted", "lead.accepted", "opportunity.created", "deal.won", "deal.lost"}
)
#: The internal event an API update of attributes is stored as, so that replay reproduces it.
ATTRIBUTES_UPDATED = "lead.attributes_updated"
LEADS_TABLE: Table = Base.metadata.tables["leads"]
SCORES_TABLE: Table = Base.metadata.tables["lead_scores"]
EVENTS_TABLE: Table = Base.metadata.tables["events"]
IDENTITIES_TABLE: Table = Base.metadata.tables["lead_identities"]
HISTORY_TABLE: Table = Base.metadata.tables["score_changes"]
OUTCOMES_TABLE: Table = Base.metadata.tables["outcomes"]
#: Rows per IN (...) list: far below SQLite's and PostgreSQL's parameter limits.
_CHUNK = 500


@dataclass
class EventError:
    """An item that could not be turned into a canonical event; it is answered ``rejected``."""

    id: str | None
    error: str
    type: str | None = None


IngestItem = CanonicalEvent | EventError


@dataclass
class EventResult:
    """The answer for one event, plus what the metrics need (``type``, ``transitions``)."""

    id: str | None
    status: str
    lead_id: str | None = None
    error: str | None = None
    unknown_type: bool = False
    warning: str | None = None
    type: str | None = None
    transitions: list[str] = field(default_factory=list)

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "lead_id": self.lead_id,
            "error": self.error,
            "unknown_type": self.unknown_type,
            "warning": self.warning,
        }


class Contention(Exception):
    """Concurrent writers kept winning; the request wrote nothing and may be sent again."""

    def __init__(self, attempts: int) -> None:
        super().__init__(f"the request lost {attempts} races with concurrent writers")


class RetryTransaction(Exception):
    """A concurrent transaction changed rows this one relied on; run the request again."""


class EventBodyError(ValueError):
    """The request body is neither an event nor ``{"events": [...]}``."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))
        self.errors = errors


# ---------------------------------------------------------------------------------------------
# Parsing


def _field(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "event"


def describe_validation_error(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": _field(err["loc"]), "message": err["msg"].removeprefix("Value error, ")}
        for err in exc.errors()
    ]


def parse_event(data: object) -> IngestItem:
    """A canonical event, or an ``EventError`` whose message names the bad field(s)."""
    event_id = data.get("id") if isinstance(data, dict) else None
    event_type = data.get("type") if isinstance(data, dict) else None
    safe_id = event_id if isinstance(event_id, str) else None
    safe_type = event_type if isinstance(event_type, str) else None
    if not isinstance(data, dict):
        return EventError(safe_id, "event: must be a JSON object")
    try:
        return CanonicalEvent.model_validate(data)
    except ValidationError as exc:
        errors = describe_validation_error(exc)
        message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return EventError(safe_id, message, safe_type)


def parse_body(body: object, max_batch_size: int) -> tuple[list[IngestItem], bool]:
    """Items to ingest from a request body, and whether it was a batch.

    A single event that is invalid raises ``EventBodyError`` (the body is not an event); in a
    batch, each invalid event becomes an ``EventError`` and the others go ahead.
    """
    if not isinstance(body, dict):
        raise EventBodyError(
            [{"field": "body", "message": 'must be an event object or {"events": [...]}'}]
        )
    if "events" in body and "id" not in body:
        extra = sorted(set(body) - {"events"})
        if extra:
            raise EventBodyError(
                [{"field": name, "message": "is not allowed next to events"} for name in extra]
            )
        events = body["events"]
        if not isinstance(events, list):
            raise EventBodyError([{"field": "events", "message": "must be a list of events"}])
        if len(events) > max_batch_size:
            raise EventBodyError(
                [
                    {
                        "field": "events",
                        "message": f"has {len(events)} events; at most {max_batch_size} per request",
                    }
                ]
            )
        return [parse_event(item) for item in events], True
    try:
        return [CanonicalEvent.model_validate(body)], False
    except ValidationError as exc:
        raise EventBodyError(describe_validation_error(exc)) from None


# ---------------------------------------------------------------------------------------------
# Conversions


def to_scoring_event(event: CanonicalEvent | Event) -> ScoringEvent:
    return ScoringEvent(
        id=event.id,
        type=event.type,
        occurred_at=event.occurred_at,
        properties=event.properties or {},
        attributes=event.attributes or {},
    )


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def lead_to_api(lead: Lead | LeadData) -> dict[str, Any]:
    """A lead as the API (and outbound webhooks) show it; JSON-able."""
    return {
        "id": lead.id,
        "email": lead.email,
        "external_id": lead.external_id,
        "attributes": lead.attributes or {},
        "letter": lead.letter,
        "score": lead.score,
        "tier": lead.tier,
        "stage": lead.stage,
        "components": lead.components or {},
        "next_action": lead.next_action,
        "next_action_due": iso(lead.next_action_due),
        "owner": lead.owner,
        "ruleset": {"name": lead.ruleset_name, "version": lead.ruleset_version},
        "models": lead.models or {},
        "created_at": iso(lead.created_at),
        "updated_at": iso(lead.updated_at),
    }


# ---------------------------------------------------------------------------------------------
# Outbox (written by the delivery subsystem; optional so the service runs without it)

_OUTBOX_MODULE = "leadscore_api.delivery.outbox"
_enqueue_transitions: Callable[..., object] | None = None
if importlib.util.find_spec(_OUTBOX_MODULE) is not None:
    _enqueue_transitions = getattr(
        importlib.import_module(_OUTBOX_MODULE), "enqueue_transitions", None
    )


def enqueue(
    session: Session,
    lead: LeadData,
    transitions: list[Transition],
    event_id: str | None,
    result: ScoreResult,
    loaded: LoadedRuleset,
    pending: PendingWrites | None = None,
) -> None:
    if not transitions or _enqueue_transitions is None:
        return
    if pending is not None:
        # Without an enabled subscription there is nothing to queue: ask once per request
        # instead of once per lead (``enqueue_transitions`` queries the subscriptions itself).
        if pending.has_subscriptions is None:
            found = session.connection().execute(_ANY_SUBSCRIPTION).first()
            pending.has_subscriptions = found is not None
        if not pending.has_subscriptions:
            return
    _enqueue_transitions(
        session,
        lead=lead_to_api(lead),
        transitions=transitions,
        event_id=event_id,
        ruleset_name=loaded.name,
        ruleset_version=loaded.version,
        explanation=result.explanation,
    )


# ---------------------------------------------------------------------------------------------
# Scoring one lead


def load_lead_events(session: Session, lead_id: str) -> list[ScoringEvent]:
    rows = session.execute(
        select(Event.id, Event.type, Event.occurred_at, Event.properties, Event.attributes)
        .where(Event.lead_id == lead_id)
        .order_by(Event.occurred_at, Event.id)
    )
    return [
        ScoringEvent(
            id=row.id,
            type=row.type,
            occurred_at=row.occurred_at,
            properties=row.properties or {},
            attributes=row.attributes or {},
        )
        for row in rows
    ]


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
    dirty: bool = False


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
)
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
# more than executing them. They are Core statements on the tables, run on the session's
# connection, so that no ORM bulk-persistence or unit-of-work machinery sits in the hot path.
_INSERT_LEADS = insert(LEADS_TABLE)
_INSERT_EVENTS = insert(EVENTS_TABLE)
_INSERT_IDENTITIES = insert(IDENTITIES_TABLE)
_INSERT_OUTCOMES = insert(OUTCOMES_TABLE)
_INSERT_HISTORY = insert(HISTORY_TABLE)
_INSERT_SCORES = insert(SCORES_TABLE)
_UPDATE_LEADS = (
    update(LEADS_TABLE)
    .where(LEADS_TABLE.c.id == bindparam("b_id"), LEADS_TABLE.c.version == bindparam("b_version"))
    .values(version=bindparam("new_version"), **{f: bindparam(f) for f in _LEAD_FIELDS})
)
_UPDATE_SCORES = (
    update(SCORES_TABLE)
    .where(
        SCORES_TABLE.c.lead_id == bindparam("b_lead_id"),
        SCORES_TABLE.c.ruleset_name == bindparam("b_name"),
        SCORES_TABLE.c.version == bindparam("b_version"),
    )
    .values(version=bindparam("new_version"), **{f: bindparam(f) for f in _SCORE_FIELDS})
)
_LOCK_LEADS = (
    select(LEADS_TABLE)
    .where(LEADS_TABLE.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(LEADS_TABLE.c.id)
    .with_for_update()
)
_LOAD_SCORES = select(SCORES_TABLE).where(
    SCORES_TABLE.c.lead_id.in_(bindparam("ids", expanding=True))
)
_ANY_SUBSCRIPTION = select(Subscription.id).where(Subscription.enabled.is_(True)).limit(1)
#: Which of the given event ids are stored, and which leads the given identities belong to,
#: in one round trip (``kind`` is ``"event"`` for the first part).
_LOOKUP = union_all(
    select(literal("event").label("kind"), EVENTS_TABLE.c.id, EVENTS_TABLE.c.lead_id).where(
        EVENTS_TABLE.c.id.in_(bindparam("event_ids", expanding=True))
    ),
    select(IDENTITIES_TABLE.c.kind, IDENTITIES_TABLE.c.value, IDENTITIES_TABLE.c.lead_id).where(
        IDENTITIES_TABLE.c.kind == IDENTITY_EMAIL,
        IDENTITIES_TABLE.c.value.in_(bindparam("emails", expanding=True)),
    ),
    select(IDENTITIES_TABLE.c.kind, IDENTITIES_TABLE.c.value, IDENTITIES_TABLE.c.lead_id).where(
        IDENTITIES_TABLE.c.kind == IDENTITY_EXTERNAL_ID,
        IDENTITIES_TABLE.c.value.in_(bindparam("externals", expanding=True)),
    ),
)


def _chunks(values: Sequence[str]) -> Iterable[list[str]]:
    for start in range(0, len(values), _CHUNK):
        yield list(values[start : start + _CHUNK])


def insert_leads(session: Session, leads: Iterable[LeadData]) -> None:
    rows = [
        {"id": lead.id, "version": lead.version, **{f: getattr(lead, f) for f in _LEAD_FIELDS}}
        for lead in leads
    ]
    if rows:
        session.connection().execute(_INSERT_LEADS, rows)


def _check_rowcount(result: Any, expected: int, connection: Connection) -> None:
    if connection.dialect.supports_sane_multi_rowcount and result.rowcount != expected:
        raise RetryTransaction("a row changed under this transaction (version mismatch)")


def write_leads(session: Session, leads: Iterable[LeadData]) -> None:
    """Write changed leads back, each guarded by its version (a belt on top of the row lock)."""
    params = []
    for lead in leads:
        if not lead.dirty:
            continue
        params.append(
            {
                "b_id": lead.id,
                "b_version": lead.version,
                "new_version": lead.version + 1,
                **{f: getattr(lead, f) for f in _LEAD_FIELDS},
            }
        )
        lead.version += 1
        lead.dirty = False
    if not params:
        return
    connection = session.connection()
    _check_rowcount(connection.execute(_UPDATE_LEADS, params), len(params), connection)


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
    connection = session.connection()
    if inserts:
        connection.execute(_INSERT_SCORES, inserts)
    if updates:
        _check_rowcount(connection.execute(_UPDATE_SCORES, updates), len(updates), connection)


@dataclass
class PendingWrites:
    """Rows one request changes, written together at the end of the scoring step."""

    leads: list[LeadData] = field(default_factory=list)
    scores: list[ScoreData] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    timers: list[TimerPlan] = field(default_factory=list)
    #: Whether any subscription is enabled, asked once per request when a transition occurs.
    has_subscriptions: bool | None = None

    def write(self, session: Session) -> None:
        write_leads(session, self.leads)
        write_scores(session, self.scores)
        if self.history:
            session.connection().execute(_INSERT_HISTORY, self.history)
        write_timers(session, self.timers)
        self.leads.clear()
        self.scores.clear()
        self.history.clear()
        self.timers.clear()


@dataclass
class LeadUpdate:
    """What re-scoring one lead produced: transitions per cause event, for the outbox/metrics."""

    lead: LeadData
    transitions: dict[str | None, list[Transition]] = field(default_factory=dict)


def score_lead(
    session: Session,
    registry: RulesetRegistry,
    lead: LeadData,
    scores: dict[str, ScoreData],
    new_events: Sequence[ScoringEvent],
    now: datetime,
    pending: PendingWrites,
    *,
    cause: str,
    is_new: bool = False,
    replay: bool = False,
) -> LeadUpdate:
    """Apply ``new_events`` (already stored) to ``lead`` under every ruleset.

    The fast path folds the new events into the stored incremental state. It falls back to a
    replay of the lead's whole stored history when an event is older than the last one applied,
    when the stored state came from another ruleset text (sha256), when a ruleset has no state
    for this lead yet, or when the caller asks (merge).

    The lead is evaluated once per request, after all of its new events: one history row per
    ruleset whose summary changed, naming the latest event (and all of them in ``event_ids``).
    Evaluating after every event of a batch would multiply the cost of a batch by its size for
    intermediate states nobody reads.
    """
    update_ = LeadUpdate(lead=lead)
    ordered_new = sorted(new_events, key=lambda e: (e.occurred_at, e.id))
    latest = max((e.occurred_at for e in ordered_new), default=now)
    as_of = max(now, latest)
    stored_events: list[ScoringEvent] | None = None
    final: dict[str, ScoreResult] = {}
    cause_id = ordered_new[-1].id if ordered_new else None
    event_ids = [e.id for e in ordered_new]

    for loaded in registry.ordered():
        scorer = loaded.scorer
        row = scores.get(loaded.name)
        previous: dict[str, Any] | None = dict(row.summary) if row is not None else None
        must_replay = replay or (row is None and not is_new)
        must_replay = must_replay or (row is not None and row.ruleset_sha256 != loaded.sha256)
        state: LeadState | None = None
        if not must_replay:
            state = LeadState.from_json(row.state) if row is not None else scorer.new_state()
            try:
                for event in ordered_new:
                    scorer.apply(state, event)
            except OutOfOrderEvent:
                must_replay = True
        if must_replay or state is None:
            if stored_events is None:
                stored_events = load_lead_events(session, lead.id)
                # Never score "as of" a moment before a stored event: a concurrent writer's
                # clock (or a tolerated future timestamp) may be ahead of ours.
                as_of = max([as_of, *(e.occurred_at for e in stored_events)])
            state, result = scorer.replay(stored_events, as_of)
        else:
            result = scorer.evaluate(state, as_of)
        final[loaded.name] = result
        summary = result.summary()

        if loaded.name == registry.primary_name and _timers_changed(previous, summary):
            pending.timers.append(
                plan_timers(lead.id, loaded.name, result.sla, result.requalify_due, result.tier)
            )
        if previous is None or _visible(summary) != _visible(previous):
            if loaded.name == registry.primary_name:
                found = transitions_between(previous, result, cause_id, now)
                if found:
                    update_.transitions[cause_id] = found
            pending.history.append(
                {
                    "lead_id": lead.id,
                    "ruleset_name": loaded.name,
                    "ruleset_version": loaded.version,
                    "ruleset_sha256": loaded.sha256,
                    "cause": cause,
                    "event_id": cause_id,
                    "event_ids": event_ids,
                    "changed_at": now,
                    "previous": previous,
                    "current": summary,
                    "explanation": result.explanation,
                }
            )
        state_json = state.to_json()
        if row is None:
            row = ScoreData(
                lead_id=lead.id,
                ruleset_name=loaded.name,
                ruleset_version=loaded.version,
                ruleset_sha256=loaded.sha256,
                state=state_json,
                summary=summary,
                version=0,
                updated_at=now,
                is_new=True,
            )
            scores[loaded.name] = row
        else:
            row.ruleset_version = loaded.version
            row.ruleset_sha256 = loaded.sha256
            row.state = state_json
            row.summary = summary
            row.updated_at = now
        pending.scores.append(row)

    primary = final[registry.primary_name]
    _apply_summary(lead, registry, primary, final, now)
    pending.leads.append(lead)
    for event_id, transitions in update_.transitions.items():
        enqueue(session, lead, transitions, event_id, primary, registry.primary, pending)
    return update_


def _timers_changed(previous: dict[str, Any] | None, summary: dict[str, Any]) -> bool:
    """Whether the lead's open deadlines moved, so its timers must be rewritten."""
    before = previous or {}
    moved: bool = before.get("sla_due") != summary["sla_due"]
    return moved or before.get("requalify_due") != summary["requalify_due"]


def _visible(summary: dict[str, Any]) -> dict[str, Any]:
    """What a history row is written for: letter, score, tier, stage, action, owner.

    Components are left out of the comparison because decay moves them a little at every
    evaluation; a change that matters shows in the rounded score.
    """
    return {key: value for key, value in summary.items() if key != "components"}


def _apply_summary(
    lead: LeadData,
    registry: RulesetRegistry,
    primary: ScoreResult,
    final: dict[str, ScoreResult],
    now: datetime,
) -> None:
    summary = primary.summary()
    lead.attributes = dict(primary.attributes)
    lead.letter = primary.letter
    lead.score = primary.score
    lead.tier = primary.tier
    lead.stage = primary.stage
    lead.components = summary["components"]
    lead.next_action = primary.next_action
    lead.next_action_due = primary.next_action_due
    lead.owner = primary.owner
    lead.ruleset_name = registry.primary.name
    lead.ruleset_version = registry.primary.version
    lead.models = {
        name: {**result.summary(), "ruleset": {"name": name, "version": result.version}}
        for name, result in final.items()
        if name != registry.primary_name
    }
    lead.updated_at = now
    lead.dirty = True


def lock_leads(session: Session, lead_ids: Iterable[str]) -> dict[str, LeadData]:
    """Load and lock leads in id order (one order everywhere, so two requests never deadlock)."""
    connection = session.connection()
    found: dict[str, LeadData] = {}
    for chunk in _chunks(sorted(set(lead_ids))):
        for row in connection.execute(_LOCK_LEADS, {"ids": chunk}).mappings():
            found[row["id"]] = LeadData(**row)
    return found


def load_scores(session: Session, lead_ids: Iterable[str]) -> dict[str, dict[str, ScoreData]]:
    connection = session.connection()
    out: dict[str, dict[str, ScoreData]] = defaultdict(dict)
    for chunk in _chunks(sorted(set(lead_ids))):
        for row in connection.execute(_LOAD_SCORES, {"ids": chunk}).mappings():
            out[row["lead_id"]][row["ruleset_name"]] = ScoreData(**row)
    return out


# ---------------------------------------------------------------------------------------------
# Identity


@dataclass
class _Resolution:
    lead_ids: list[str]
    warnings: list[str | None]
    #: Leads seen for the first time, and their identities: not yet written.
    new_leads: dict[str, LeadData]
    new_identities: list[dict[str, Any]]


def _identities(events: Iterable[CanonicalEvent]) -> tuple[list[str], list[str]]:
    emails = sorted({e.lead.email for e in events if e.lead.email})
    externals = sorted({e.lead.external_id for e in events if e.lead.external_id})
    return emails, externals


def _lookup(
    session: Session, events: Sequence[CanonicalEvent]
) -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    """Stored event ids (to their lead) and known identities (to their lead) of ``events``.

    One query for both when the lists fit in one statement (every request up to 500 events),
    which saves a round trip per request on PostgreSQL.
    """
    ids = sorted({e.id for e in events})
    emails, externals = _identities(events)
    stored: dict[str, str] = {}
    known: dict[tuple[str, str], str] = {}
    connection = session.connection()
    if max(len(ids), len(emails), len(externals)) <= _CHUNK:
        params = {"event_ids": ids, "emails": emails, "externals": externals}
        for kind, value, lead_id in connection.execute(_LOOKUP, params):
            if kind == "event":
                stored[value] = lead_id
            else:
                known[(kind, value)] = lead_id
        return stored, known
    empty: list[str] = []
    for chunk in _chunks(ids):
        params = {"event_ids": chunk, "emails": empty, "externals": empty}
        for _kind, value, lead_id in connection.execute(_LOOKUP, params):
            stored[value] = lead_id
    for chunk in _chunks(emails):
        params = {"event_ids": empty, "emails": chunk, "externals": empty}
        for kind, value, lead_id in connection.execute(_LOOKUP, params):
            known[(kind, value)] = lead_id
    for chunk in _chunks(externals):
        params = {"event_ids": empty, "emails": empty, "externals": chunk}
        for kind, value, lead_id in connection.execute(_LOOKUP, params):
            known[(kind, value)] = lead_id
    return stored, known


def _resolve_leads(
    session: Session,
    events: Sequence[CanonicalEvent],
    now: datetime,
    known: dict[tuple[str, str], str],
) -> _Resolution:
    """The lead of each event, creating leads and identities on first sight.

    ``known`` maps the identities already stored (at least those of ``events``) to their lead;
    it is extended with the identities created here.

    An event whose email and external id belong to two different leads goes to the email's
    lead and carries a warning: merging people is a decision for a human (or a CRM), made
    explicitly with ``POST /v1/leads/{id}/merge``.
    """

    new_leads: dict[str, LeadData] = {}
    new_identities: list[dict[str, Any]] = []
    lead_ids: list[str] = []
    warnings: list[str | None] = []
    for event in events:
        email_key = (IDENTITY_EMAIL, event.lead.email) if event.lead.email else None
        ext_key = (IDENTITY_EXTERNAL_ID, event.lead.external_id) if event.lead.external_id else None
        by_email = known.get(email_key) if email_key else None
        by_ext = known.get(ext_key) if ext_key else None
        warning = None
        if by_email and by_ext and by_email != by_ext:
            warning = (
                f"external_id {event.lead.external_id!r} belongs to lead {by_ext}; the event was"
                f" attached to lead {by_email} (the email's lead). Merge them with"
                f" POST /v1/leads/{by_email}/merge if they are one person"
            )
        found = by_email or by_ext
        lead_id = found if found is not None else new_id("lead")
        if found is None:
            new_leads[lead_id] = new_lead(lead_id, event.lead.email, event.lead.external_id, now)
        elif lead_id in new_leads:
            pending = new_leads[lead_id]
            if pending.email is None and event.lead.email:
                pending.email = event.lead.email
            if pending.external_id is None and event.lead.external_id:
                pending.external_id = event.lead.external_id
        for key in (email_key, ext_key):
            if key is not None and key not in known:
                known[key] = lead_id
                new_identities.append(
                    {"kind": key[0], "value": key[1], "lead_id": lead_id, "created_at": now}
                )
        lead_ids.append(lead_id)
        warnings.append(warning)

    new_identities.sort(key=lambda row: (row["kind"], row["value"]))
    return _Resolution(lead_ids, warnings, new_leads, new_identities)


def _create_leads(session: Session, resolution: _Resolution) -> None:
    insert_leads(session, resolution.new_leads.values())
    if resolution.new_identities:
        session.connection().execute(_INSERT_IDENTITIES, resolution.new_identities)


def _fill_identity_columns(lead: LeadData, event: CanonicalEvent) -> None:
    if lead.email is None and event.lead.email:
        lead.email = event.lead.email
        lead.dirty = True
    if lead.external_id is None and event.lead.external_id:
        lead.external_id = event.lead.external_id
        lead.dirty = True


# ---------------------------------------------------------------------------------------------
# The pipeline


def ingest_events(
    session: Session,
    registry: RulesetRegistry,
    settings: Settings,
    items: Sequence[IngestItem],
    *,
    now: datetime | None = None,
) -> list[EventResult]:
    """Ingest ``items`` in the caller's transaction; one result per item, in input order.

    May raise ``IntegrityError``/``RetryTransaction`` when a concurrent transaction won a race;
    roll back and call again (:func:`run_ingest` does).
    """
    now = now or utcnow()
    results: list[EventResult | None] = [None] * len(items)
    candidates: list[tuple[int, CanonicalEvent]] = []
    first_index: dict[str, int] = {}
    in_batch_duplicates: list[tuple[int, int]] = []
    for index, item in enumerate(items):
        if isinstance(item, EventError):
            results[index] = EventResult(item.id, "rejected", error=item.error, type=item.type)
            continue
        if item.occurred_at > now + FUTURE_TOLERANCE:
            results[index] = EventResult(
                item.id,
                "rejected",
                error="occurred_at: is in the future (more than 5 minutes after the server's clock)",
                type=item.type,
                unknown_type=not item.known_type,
            )
            continue
        if item.id in first_index:
            in_batch_duplicates.append((index, first_index[item.id]))
            continue
        first_index[item.id] = index
        candidates.append((index, item))

    stored, known = _lookup(session, [event for _, event in candidates])
    fresh: list[tuple[int, CanonicalEvent]] = []
    for index, event in candidates:
        if event.id in stored:
            results[index] = EventResult(
                event.id,
                "duplicate",
                lead_id=stored[event.id],
                type=event.type,
                unknown_type=not event.known_type,
            )
        else:
            fresh.append((index, event))

    if fresh:
        _apply_fresh(session, registry, fresh, results, now, known)

    for index, first in in_batch_duplicates:
        item = items[index]
        assert isinstance(item, CanonicalEvent)
        original = results[first]
        lead_id = original.lead_id if original is not None else None
        results[index] = EventResult(
            item.id, "duplicate", lead_id=lead_id, type=item.type, unknown_type=not item.known_type
        )

    out: list[EventResult] = []
    for result in results:
        assert result is not None
        out.append(result)
    return out


def _apply_fresh(
    session: Session,
    registry: RulesetRegistry,
    fresh: list[tuple[int, CanonicalEvent]],
    results: list[EventResult | None],
    now: datetime,
    known: dict[tuple[str, str], str],
) -> None:
    events = [event for _, event in fresh]
    resolution = _resolve_leads(session, events, now, known)
    # Existing leads are locked before anything is written: a transaction then never waits for
    # a lead lock while holding uncommitted identities another one waits for (a deadlock on
    # PostgreSQL when two batches share new and existing people). New leads are this
    # transaction's own rows and are used as built, without reading them back.
    existing = set(resolution.lead_ids) - resolution.new_leads.keys()
    leads = lock_leads(session, existing)
    if len(leads) != len(existing):
        # A lead vanished between lookup and lock (merged or erased concurrently).
        raise RetryTransaction("a lead changed while the request was being processed")
    _create_leads(session, resolution)
    leads.update(resolution.new_leads)

    rows: list[dict[str, Any]] = []
    outcomes: list[dict[str, Any]] = []
    by_lead: dict[str, list[ScoringEvent]] = defaultdict(list)
    for event, lead_id in zip(events, resolution.lead_ids, strict=True):
        _fill_identity_columns(leads[lead_id], event)
        rows.append(
            {
                "id": event.id,
                "lead_id": lead_id,
                "type": event.type,
                "known_type": event.known_type,
                "occurred_at": event.occurred_at,
                "received_at": now,
                "source": event.source,
                "properties": event.properties,
                "attributes": event.attributes,
                "raw": event.raw,
            }
        )
        if event.type in OUTCOME_TYPES:
            outcomes.append(
                {
                    "lead_id": lead_id,
                    "event_id": event.id,
                    "type": event.type,
                    "occurred_at": event.occurred_at,
                    "source": event.source,
                    "amount": _amount(event.properties),
                }
            )
        by_lead[lead_id].append(to_scoring_event(event))
    connection = session.connection()
    connection.execute(_INSERT_EVENTS, rows)
    if outcomes:
        connection.execute(_INSERT_OUTCOMES, outcomes)

    # A statement of its own, after the lock: joined into the locking SELECT, PostgreSQL
    # (READ COMMITTED) would return the scores of the snapshot taken *before* waiting for a
    # lock held by a concurrent writer, and the version check would then fail and retry
    # (tried: the concurrency test caught it).
    scores = load_scores(session, by_lead)
    pending = PendingWrites()
    transitions_by_event: dict[str | None, list[Transition]] = {}
    for lead_id, lead_events in by_lead.items():
        update_ = score_lead(
            session,
            registry,
            leads[lead_id],
            scores[lead_id],
            lead_events,
            now,
            pending,
            cause="event",
            is_new=lead_id in resolution.new_leads,
        )
        for event_id, transitions in update_.transitions.items():
            transitions_by_event.setdefault(event_id, []).extend(transitions)
    pending.write(session)

    for (index, event), lead_id, warning in zip(
        fresh, resolution.lead_ids, resolution.warnings, strict=True
    ):
        results[index] = EventResult(
            event.id,
            "accepted",
            lead_id=lead_id,
            unknown_type=not event.known_type,
            warning=warning,
            type=event.type,
            transitions=[t.type for t in transitions_by_event.get(event.id, [])],
        )


def _amount(properties: dict[str, Any]) -> float | None:
    for key in ("amount", "value", "amount_eur"):
        value = properties.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


# ---------------------------------------------------------------------------------------------
# Transactions with retry

T = TypeVar("T")

#: PostgreSQL SQLSTATEs that mean "run the transaction again": serialization failure, deadlock.
_RETRY_SQLSTATES = frozenset({"40001", "40P01"})


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, RetryTransaction | IntegrityError | StaleDataError):
        return True
    if isinstance(exc, OperationalError):
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if sqlstate in _RETRY_SQLSTATES:
            return True
        return "database is locked" in str(exc.orig)
    return False


def in_transaction(
    session_factory: sessionmaker[Session],
    work: Callable[[Session], T],
    *,
    attempts: int = 10,
) -> T:
    """Run ``work`` in one transaction, again from scratch if a concurrent writer won a race.

    Races are expected when several replicas create the same new leads at once (the identity's
    unique key decides who wins); the loser waits a little, with jitter so that two losers do
    not collide again, and finds the winner's rows. Running out of attempts is a 503 with
    Retry-After, never a 500: nothing was written and the client can send the request again.
    """
    for attempt in range(1, attempts + 1):
        try:
            with session_factory() as session, session.begin():
                return work(session)
        except Exception as exc:
            if not is_retryable(exc):
                raise
            if attempt >= attempts:
                raise Contention(attempts) from exc
            log.info("retrying a transaction after %s (attempt %d)", type(exc).__name__, attempt)
            time.sleep(random.uniform(0.0, min(1.0, 0.01 * 2**attempt)))
    raise AssertionError("unreachable")


def run_ingest(
    session_factory: sessionmaker[Session],
    registry: RulesetRegistry,
    settings: Settings,
    items: Sequence[IngestItem],
) -> list[EventResult]:
    """Ingest ``items`` in one transaction of its own (what webhook adapters should call)."""
    return in_transaction(
        session_factory, lambda session: ingest_events(session, registry, settings, items)
    )
