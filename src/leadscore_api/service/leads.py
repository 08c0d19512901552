"""Leads for the CRM API: lookup, lists with cursors, history, explain, update, merge, erasure.

Every function that changes a lead takes the same lock as ingestion (the ``leads`` row) and
goes through :func:`leadscore_api.service.scoring.score_lead`, so an API change and a
concurrent event can never overwrite each other, and the history reads the same whatever
wrote it. Writes run in a unit of work of their own, retried on contention.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.errors import BadCursor, InvalidInput, LeadNotFound
from leadscore_api.ingest.events import normalise_email
from leadscore_api.scoring import LeadState, ScoringEvent
from leadscore_api.service import crm_outbox, delivery, explanations, tombstones
from leadscore_api.service.rulesets import RulesetRegistry
from leadscore_api.service.scoring import PendingWrites, score_lead
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.ids import new_id
from leadscore_api.storage.models import Lead, ScoreChange
from leadscore_api.storage.repositories import leads as leads_repo
from leadscore_api.storage.repositories.leads import LeadData, LeadFilters
from leadscore_api.storage.unit_of_work import in_transaction

#: The internal event an API update of attributes is stored as, so that replay reproduces it.
ATTRIBUTES_UPDATED = "lead.attributes_updated"

__all__ = ["ATTRIBUTES_UPDATED", "LeadFilters"]


# -- cursors: opaque to clients, a small JSON document for us ----------------------------------


def encode_cursor(kind: str, values: list[Any]) -> str:
    raw = json.dumps({"k": kind, "v": values}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError) as exc:
        raise BadCursor() from exc
    if not isinstance(data, dict) or data.get("k") != kind or not isinstance(data.get("v"), list):
        raise BadCursor("is not a cursor issued by this API for this list")
    values: list[Any] = data["v"]
    return values


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


# -- reading -----------------------------------------------------------------------------------


def get_lead(session: Session, lead_id: str) -> Lead:
    lead = leads_repo.get_lead(session, lead_id)
    if lead is None:
        raise LeadNotFound(lead_id)
    return lead


def list_leads(
    session: Session, filters: LeadFilters, cursor: str | None, limit: int
) -> tuple[list[Lead], str | None]:
    """Leads oldest-updated first, so a CRM syncing with ``updated_since`` never misses one."""
    if filters.email is not None:
        try:
            filters.email = normalise_email(filters.email)
        except ValueError as exc:
            raise InvalidInput.field("email", str(exc)) from None
    if filters.external_id is not None:
        filters.external_id = filters.external_id.strip()
    after: tuple[datetime, str] | None = None
    if cursor is not None:
        values = decode_cursor("leads", cursor)
        try:
            after_time = datetime.fromisoformat(str(values[0]).replace("Z", "+00:00"))
            after_id = str(values[1])
        except (IndexError, ValueError) as exc:
            raise BadCursor() from exc
        if after_time.tzinfo is None:
            raise BadCursor()
        after = (after_time, after_id)
    leads = leads_repo.list_leads(session, filters, after, limit + 1)
    next_cursor = None
    if len(leads) > limit:
        leads = leads[:limit]
        last = leads[-1]
        next_cursor = encode_cursor("leads", [_iso(last.updated_at), last.id])
    return leads, next_cursor


def history(
    session: Session, registry: RulesetRegistry, lead_id: str, cursor: str | None, limit: int
) -> tuple[list[tuple[ScoreChange, str | None, dict[str, Any]]], str | None]:
    """The lead's changes, oldest first, each with the type of the event that caused it and
    its explanation (rendered from the row's inputs)."""
    get_lead(session, lead_id)
    after_id: int | None = None
    if cursor is not None:
        values = decode_cursor("history", cursor)
        if len(values) != 1 or not isinstance(values[0], int):
            raise BadCursor()
        after_id = values[0]
    rows = leads_repo.history(session, lead_id, after_id, limit + 1)
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor("history", [rows[-1][0].id])
    return [
        (
            change,
            event_type,
            explanations.render(
                session, registry, change.ruleset_name, change.ruleset_sha256, change.explanation
            ),
        )
        for change, event_type in rows
    ], next_cursor


def explain(
    session: Session, registry: RulesetRegistry, lead_id: str, now: datetime | None = None
) -> dict[str, Any]:
    """The lead re-evaluated as of now (decay applied), by component and rule, every ruleset."""
    lead = get_lead(session, lead_id)
    now = now or utcnow()
    scores = leads_repo.load_scores(session, [lead.id]).get(lead.id, {})
    stored_events: list[ScoringEvent] | None = None
    results: dict[str, dict[str, Any]] = {}
    for loaded in registry.ordered():
        row = scores.get(loaded.name)
        if row is not None and row.ruleset_sha256 == loaded.sha256:
            state = LeadState.from_json(row.state)
            result = loaded.scorer.evaluate(state, now)
        else:
            if stored_events is None:
                stored_events = leads_repo.lead_events(session, lead.id)
            _, result = loaded.scorer.replay(stored_events, now)
        results[loaded.name] = result.to_dict()
    primary = results.pop(registry.primary_name)
    return {"lead_id": lead.id, **primary, "models": results}


# -- changing ----------------------------------------------------------------------------------


def _locked(session: Session, lead_id: str) -> LeadData:
    lead = leads_repo.lock_leads(session, [lead_id]).get(lead_id)
    if lead is None:
        raise LeadNotFound(lead_id)
    return lead


def update_attributes(
    session_factory: sessionmaker[Session],
    registry: RulesetRegistry,
    lead_id: str,
    attributes: dict[str, Any],
) -> LeadData:
    """Store the update as an internal event and re-score, so replays reproduce it."""

    def work(session: Session) -> LeadData:
        lead = _locked(session, lead_id)
        # The time is read after the lock so that updates to one lead get increasing times.
        now = utcnow()
        event = ScoringEvent(
            id=new_id("attr"),
            type=ATTRIBUTES_UPDATED,
            occurred_at=now,
            properties={},
            attributes=dict(attributes),
        )
        leads_repo.insert_events(
            session,
            [
                {
                    "id": event.id,
                    "lead_id": lead.id,
                    "type": event.type,
                    "known_type": False,
                    "occurred_at": now,
                    "received_at": now,
                    "source": "api",
                    "properties": {},
                    "attributes": dict(attributes),
                    "raw": None,
                }
            ],
        )
        scores = leads_repo.load_scores(session, [lead.id]).get(lead.id, {})
        pending = PendingWrites()
        score_lead(session, registry, lead, scores, [event], now, pending, cause="attributes")
        pending.write(session)
        return lead

    return in_transaction(session_factory, work)


def merge_leads(
    session_factory: sessionmaker[Session],
    registry: RulesetRegistry,
    target_id: str,
    other_id: str,
) -> LeadData:
    """Fold ``other`` into ``target``: identities, events, outcomes, history and the messages
    still queued about ``other`` move; re-score.

    The target is re-scored by replaying every event of both leads, which is exactly what it
    would have scored had all events named it from the start.
    """
    if target_id == other_id:
        raise InvalidInput.field("other_lead_id", "must differ from the lead id")

    def work(session: Session) -> LeadData:
        now = utcnow()
        leads = leads_repo.lock_leads(session, [target_id, other_id])
        for wanted in (target_id, other_id):
            if wanted not in leads:
                raise LeadNotFound(wanted)
        target, other = leads[target_id], leads[other_id]
        crm_outbox.pass_on_merge(session, target_id, other_id, now)
        leads_repo.move_lead_rows(session, other_id, target_id)
        if target.email is None:
            target.email = other.email
        if target.external_id is None:
            target.external_id = other.external_id
        target.created_at = min(target.created_at, other.created_at)
        delivery.move_queued(
            session,
            other_id,
            {"id": target.id, "email": target.email, "external_id": target.external_id},
        )
        # Subscribers heard of the other lead's stages: the merged person is not new to them.
        target.announced_stages = sorted(set(target.announced_stages) | set(other.announced_stages))
        leads_repo.delete_lead(session, other_id)
        scores = leads_repo.load_scores(session, [target_id]).get(target_id, {})
        pending = PendingWrites()
        score_lead(session, registry, target, scores, [], now, pending, cause="merge", replay=True)
        pending.write(session)
        return target

    return in_transaction(session_factory, work)


def erase_lead(session_factory: sessionmaker[Session], lead_id: str) -> dict[str, int]:
    """GDPR erasure: the person's data goes; only anonymous counts stay (``erasures``), and the
    keyed hashes of their identities and event ids (``service/tombstones.py``), so that a retry
    or a re-import does not bring them back.

    Queued outbound messages about the lead go too: their payloads name the person. Each CRM
    holding a record of the person is asked to erase it (``crm.erase``).
    """

    def work(session: Session) -> dict[str, int]:
        lead = _locked(session, lead_id)
        now = utcnow()
        tombstones.bury(session, lead.id, now)
        counts = leads_repo.erase_personal_rows(session, lead.id)
        delivery.forget_lead(session, lead.id)
        # After forget_lead: the erasures carry no lead id, so they are not forgotten with it.
        crm_outbox.pass_on_erase(session, lead.id, utcnow())
        leads_repo.delete_lead(session, lead.id)
        leads_repo.record_erasure(session, now, counts)
        return counts

    return in_transaction(session_factory, work)
