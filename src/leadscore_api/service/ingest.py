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
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from leadscore_api.config import Settings
from leadscore_api.delivery.timers import schedule_timers
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
    LeadIdentity,
    Outcome,
    ScoreChange,
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
    return [{"field": _field(err["loc"]), "message": err["msg"]} for err in exc.errors()]


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
) -> None:
    if not transitions or _enqueue_transitions is None:
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


def insert_leads(session: Session, leads: Iterable[LeadData]) -> None:
    rows = [
        {"id": lead.id, "version": lead.version, **{f: getattr(lead, f) for f in _LEAD_FIELDS}}
        for lead in leads
    ]
    if rows:
        session.execute(insert(LEADS_TABLE), rows)


def _check_rowcount(result: Any, expected: int, session: Session) -> None:
    dialect = session.get_bind().dialect
    if dialect.supports_sane_multi_rowcount and result.rowcount != expected:
        raise RetryTransaction("a row changed under this transaction (version mismatch)")


def write_leads(session: Session, leads: Iterable[LeadData]) -> None:
    """Write changed leads back, each guarded by its version (a belt on top of the row lock)."""
    table = LEADS_TABLE
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
    statement = (
        update(table)
        .where(table.c.id == bindparam("b_id"), table.c.version == bindparam("b_version"))
        .values(version=bindparam("new_version"), **{f: bindparam(f) for f in _LEAD_FIELDS})
    )
    _check_rowcount(session.execute(statement, params), len(params), session)


def write_scores(session: Session, scores: Iterable[ScoreData]) -> None:
    table = SCORES_TABLE
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
    if inserts:
        session.execute(insert(table), inserts)
    if updates:
        statement = (
            update(table)
            .where(
                table.c.lead_id == bindparam("b_lead_id"),
                table.c.ruleset_name == bindparam("b_name"),
                table.c.version == bindparam("b_version"),
            )
            .values(version=bindparam("new_version"), **{f: bindparam(f) for f in _SCORE_FIELDS})
        )
        _check_rowcount(session.execute(statement, updates), len(updates), session)


@dataclass
class PendingWrites:
    """Rows one request changes, written together at the end of the scoring step."""

    leads: list[LeadData] = field(default_factory=list)
    scores: list[ScoreData] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    def write(self, session: Session) -> None:
        write_leads(session, self.leads)
        write_scores(session, self.scores)
        if self.history:
            session.execute(insert(ScoreChange), self.history)
        self.leads.clear()
        self.scores.clear()
        self.history.clear()


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
            schedule_timers(
                session,
                lead_id=lead.id,
                ruleset_name=loaded.name,
                sla=result.sla,
                requalify_due=result.requalify_due,
                tier=result.tier,
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
        enqueue(session, lead, transitions, event_id, primary, registry.primary)
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
    ids = sorted(set(lead_ids))
    table = LEADS_TABLE
    found: dict[str, LeadData] = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        statement = (
            select(table).where(table.c.id.in_(chunk)).order_by(table.c.id).with_for_update()
        )
        for row in session.execute(statement).mappings():
            found[row["id"]] = LeadData(**row)
    return found


def load_scores(session: Session, lead_ids: Iterable[str]) -> dict[str, dict[str, ScoreData]]:
    ids = sorted(set(lead_ids))
    table = SCORES_TABLE
    out: dict[str, dict[str, ScoreData]] = defaultdict(dict)
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        for row in session.execute(select(table).where(table.c.lead_id.in_(chunk))).mappings():
            out[row["lead_id"]][row["ruleset_name"]] = ScoreData(**row)
    return out


# ---------------------------------------------------------------------------------------------
# Identity


@dataclass
class _Resolution:
    lead_ids: list[str]
    warnings: list[str | None]
    new_leads: set[str]


def _resolve_leads(
    session: Session, events: Sequence[CanonicalEvent], now: datetime
) -> _Resolution:
    """The lead of each event, creating leads and identities on first sight.

    An event whose email and external id belong to two different leads goes to the email's
    lead and carries a warning: merging people is a decision for a human (or a CRM), made
    explicitly with ``POST /v1/leads/{id}/merge``.
    """
    emails = sorted({e.lead.email for e in events if e.lead.email})
    externals = sorted({e.lead.external_id for e in events if e.lead.external_id})
    known: dict[tuple[str, str], str] = {}
    for kind, values in ((IDENTITY_EMAIL, emails), (IDENTITY_EXTERNAL_ID, externals)):
        for start in range(0, len(values), _CHUNK):
            chunk = values[start : start + _CHUNK]
            rows = session.execute(
                select(LeadIdentity.value, LeadIdentity.lead_id).where(
                    LeadIdentity.kind == kind, LeadIdentity.value.in_(chunk)
                )
            )
            for value, lead_id in rows:
                known[(kind, value)] = lead_id

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

    insert_leads(session, new_leads.values())
    if new_identities:
        new_identities.sort(key=lambda row: (row["kind"], row["value"]))
        session.execute(insert(LeadIdentity), new_identities)
    return _Resolution(lead_ids=lead_ids, warnings=warnings, new_leads=set(new_leads))


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

    stored = _stored_events(session, [event.id for _, event in candidates])
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
        _apply_fresh(session, registry, fresh, results, now)

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


def _stored_events(session: Session, ids: Sequence[str]) -> dict[str, str]:
    stored: dict[str, str] = {}
    unique = sorted(set(ids))
    for start in range(0, len(unique), _CHUNK):
        chunk = unique[start : start + _CHUNK]
        for event_id, lead_id in session.execute(
            select(Event.id, Event.lead_id).where(Event.id.in_(chunk))
        ):
            stored[event_id] = lead_id
    return stored


def _apply_fresh(
    session: Session,
    registry: RulesetRegistry,
    fresh: list[tuple[int, CanonicalEvent]],
    results: list[EventResult | None],
    now: datetime,
) -> None:
    events = [event for _, event in fresh]
    resolution = _resolve_leads(session, events, now)
    leads = lock_leads(session, resolution.lead_ids)
    if len(leads) != len(set(resolution.lead_ids)):
        # A lead vanished between lookup and lock (merged or erased concurrently).
        raise RetryTransaction("a lead changed while the request was being processed")

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
    session.execute(insert(Event), rows)
    if outcomes:
        session.execute(insert(Outcome), outcomes)

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
    attempts: int = 5,
) -> T:
    """Run ``work`` in one transaction, again from scratch if a concurrent writer won a race."""
    for attempt in range(1, attempts + 1):
        try:
            with session_factory() as session, session.begin():
                return work(session)
        except Exception as exc:
            if attempt >= attempts or not is_retryable(exc):
                raise
            log.info("retrying a transaction after %s (attempt %d)", type(exc).__name__, attempt)
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
