"""Event ingestion: store each event once, score its lead, record the change, queue transitions.

Used by ``POST /v1/events`` and by the inbound webhooks, which build canonical events from
platform payloads and hand them to :func:`run_ingest` (or to :func:`ingest_events` inside a
unit of work of their own).

Everything one call does happens in one transaction: events, identities, scores, history and
outbox rows are written together or not at all. What a concurrent transaction can still do is
win a race to insert the same event id or identity first; that surfaces as a unique-key error,
and the unit of work runs the whole request again, which then sees the winner's rows.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from leadscore_api import logs
from leadscore_api.ingest.events import CanonicalEvent
from leadscore_api.ingest.parsing import EventError, IngestItem
from leadscore_api.scoring import ScoringEvent, Transition
from leadscore_api.service import tombstones
from leadscore_api.service.rulesets import RulesetRegistry
from leadscore_api.service.scoring import PendingWrites, score_lead
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.ids import new_id
from leadscore_api.storage.models import IDENTITY_EMAIL, IDENTITY_EXTERNAL_ID
from leadscore_api.storage.repositories import leads as leads_repo
from leadscore_api.storage.repositories.leads import LeadData, new_lead
from leadscore_api.storage.unit_of_work import RetryTransaction, in_transaction

_log = logs.get_logger("leadscore.ingest")
#: How far in the future an event may claim to have happened (clock skew between systems).
FUTURE_TOLERANCE = timedelta(minutes=5)
#: CRM outcome events, also kept in ``outcomes`` for KPIs and backtests.
OUTCOME_TYPES = frozenset(
    {"lead.contacted", "lead.accepted", "opportunity.created", "deal.won", "deal.lost"}
)


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


def to_scoring_event(event: CanonicalEvent) -> ScoringEvent:
    return ScoringEvent(
        id=event.id,
        type=event.type,
        occurred_at=event.occurred_at,
        properties=event.properties or {},
        attributes=event.attributes or {},
    )


@dataclass
class _Resolution:
    lead_ids: list[str]
    warnings: list[str | None]
    #: Leads seen for the first time, and their identities: not yet written.
    new_leads: dict[str, LeadData]
    new_identities: list[dict[str, Any]]


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
    leads_repo.insert_leads(session, resolution.new_leads.values())
    leads_repo.insert_identities(session, resolution.new_identities)


def _fill_identity_columns(lead: LeadData, event: CanonicalEvent) -> None:
    if lead.email is None and event.lead.email:
        lead.email = event.lead.email
        lead.dirty = True
    if lead.external_id is None and event.lead.external_id:
        lead.external_id = event.lead.external_id
        lead.dirty = True


def ingest_events(
    session: Session,
    registry: RulesetRegistry,
    items: Sequence[IngestItem],
    *,
    now: datetime | None = None,
) -> list[EventResult]:
    """Ingest ``items`` in the caller's transaction; one result per item, in input order.

    May raise ``IntegrityError``/``RetryTransaction`` when a concurrent transaction won a race;
    the unit of work rolls back and calls again.
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

    stored, known = leads_repo.lookup(
        session, [(e.id, e.lead.email, e.lead.external_id) for _, e in candidates]
    )
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

    fresh = _screen_erased(session, fresh, results)
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


def _screen_erased(
    session: Session, fresh: list[tuple[int, CanonicalEvent]], results: list[EventResult | None]
) -> list[tuple[int, CanonicalEvent]]:
    """Answer the events the erasure tombstone stops; return the others."""
    verdicts = tombstones.screen(session, [event for _, event in fresh])
    if not verdicts:
        return fresh
    kept: list[tuple[int, CanonicalEvent]] = []
    for index, event in fresh:
        verdict = verdicts.get(event.id)
        if verdict is None:
            kept.append((index, event))
            continue
        results[index] = EventResult(
            event.id,
            verdict.status,
            warning=verdict.reason,
            type=event.type,
            unknown_type=not event.known_type,
        )
    return kept


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
    leads = leads_repo.lock_leads(session, existing)
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
    leads_repo.insert_events(session, rows)
    leads_repo.insert_outcomes(session, outcomes)

    # A statement of its own, after the lock: joined into the locking SELECT, PostgreSQL
    # (READ COMMITTED) would return the scores of the snapshot taken *before* waiting for a
    # lock held by a concurrent writer, and the version check would then fail and retry
    # (the two-replica concurrency test catches that).
    scores = leads_repo.load_scores(session, by_lead)
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


def log_results(results: Sequence[EventResult], source: str) -> None:
    """Log what a committed ingest did, naming leads by id (never by email).

    Called after the commit, by the route, so that nothing is logged for a transaction that
    was rolled back or run again, and every line carries the request's id.
    """
    for result in results:
        if result.transitions:
            _log.info(
                "lead transitions",
                lead_id=result.lead_id,
                event_id=result.id,
                transitions=result.transitions,
                source=source,
            )
    if logging.getLogger("leadscore.ingest").isEnabledFor(logging.DEBUG):
        by_status: dict[str, int] = defaultdict(int)
        for result in results:
            by_status[result.status] += 1
        _log.debug(
            "events ingested",
            source=source,
            counts=dict(by_status),
            lead_ids=sorted({r.lead_id for r in results if r.lead_id}),
        )


def run_ingest(
    session_factory: sessionmaker[Session],
    registry: RulesetRegistry,
    items: Sequence[IngestItem],
) -> list[EventResult]:
    """Ingest ``items`` in a unit of work of their own."""
    return in_transaction(session_factory, lambda session: ingest_events(session, registry, items))
