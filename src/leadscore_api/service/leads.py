"""Leads for the CRM API: lookup, lists with cursors, history, explain, update, merge, erasure.

Every function that changes a lead takes the same lock as ingestion (the ``leads`` row) and
goes through :func:`leadscore_api.service.ingest.score_lead`, so an API change and a
concurrent event can never overwrite each other, and the history reads the same whatever
wrote it.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from leadscore_api.ingest.events import normalise_email
from leadscore_api.scoring import LeadState, ScoringEvent
from leadscore_api.service.ingest import (
    ATTRIBUTES_UPDATED,
    LeadData,
    PendingWrites,
    iso,
    load_lead_events,
    load_scores,
    lock_leads,
    score_lead,
)
from leadscore_api.service.registry import RulesetRegistry
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.ids import new_id
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


class BadCursor(ValueError):
    """A cursor this API did not issue (or issued for another list)."""


class LeadNotFound(LookupError):
    def __init__(self, lead_id: str) -> None:
        super().__init__(f"no lead with id {lead_id!r}")
        self.lead_id = lead_id


class MergeError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------
# Cursors: opaque to clients, a small JSON document for us


def encode_cursor(kind: str, values: list[Any]) -> str:
    raw = json.dumps({"k": kind, "v": values}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError) as exc:
        raise BadCursor("is not a cursor issued by this API") from exc
    if not isinstance(data, dict) or data.get("k") != kind or not isinstance(data.get("v"), list):
        raise BadCursor("is not a cursor issued by this API for this list")
    values: list[Any] = data["v"]
    return values


# ---------------------------------------------------------------------------------------------
# Reading


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
    session: Session, filters: LeadFilters, cursor: str | None, limit: int
) -> tuple[list[Lead], str | None]:
    """Leads oldest-updated first, so a CRM syncing with ``updated_since`` never misses one."""
    statement = select(Lead)
    if filters.email is not None:
        statement = statement.where(
            Lead.id.in_(
                select(LeadIdentity.lead_id).where(
                    LeadIdentity.kind == IDENTITY_EMAIL,
                    LeadIdentity.value == normalise_email(filters.email),
                )
            )
        )
    if filters.external_id is not None:
        statement = statement.where(
            Lead.id.in_(
                select(LeadIdentity.lead_id).where(
                    LeadIdentity.kind == IDENTITY_EXTERNAL_ID,
                    LeadIdentity.value == filters.external_id.strip(),
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
    if cursor is not None:
        values = decode_cursor("leads", cursor)
        try:
            after_time = datetime.fromisoformat(str(values[0]).replace("Z", "+00:00"))
            after_id = str(values[1])
        except (IndexError, ValueError) as exc:
            raise BadCursor("is not a cursor issued by this API") from exc
        if after_time.tzinfo is None:
            raise BadCursor("is not a cursor issued by this API")
        statement = statement.where(
            or_(
                Lead.updated_at > after_time,
                and_(Lead.updated_at == after_time, Lead.id > after_id),
            )
        )
    statement = statement.order_by(Lead.updated_at, Lead.id).limit(limit + 1)
    leads = list(session.scalars(statement))
    next_cursor = None
    if len(leads) > limit:
        leads = leads[:limit]
        last = leads[-1]
        next_cursor = encode_cursor("leads", [iso(last.updated_at), last.id])
    return leads, next_cursor


def history(
    session: Session, lead_id: str, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """The lead's changes, oldest first, with the event that caused each one."""
    statement = (
        select(ScoreChange, Event.type)
        .outerjoin(Event, Event.id == ScoreChange.event_id)
        .where(ScoreChange.lead_id == lead_id)
    )
    if cursor is not None:
        values = decode_cursor("history", cursor)
        if len(values) != 1 or not isinstance(values[0], int):
            raise BadCursor("is not a cursor issued by this API")
        statement = statement.where(ScoreChange.id > values[0])
    statement = statement.order_by(ScoreChange.id).limit(limit + 1)
    rows = list(session.execute(statement))
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor("history", [rows[-1][0].id])
    items = [
        {
            "id": change.id,
            "changed_at": iso(change.changed_at),
            "cause": change.cause,
            "event_id": change.event_id,
            "event_ids": change.event_ids or ([change.event_id] if change.event_id else []),
            "event_type": event_type,
            "ruleset": {
                "name": change.ruleset_name,
                "version": change.ruleset_version,
                "sha256": change.ruleset_sha256,
            },
            "previous": change.previous,
            "current": change.current,
            "explanation": change.explanation,
        }
        for change, event_type in rows
    ]
    return items, next_cursor


def explain(
    session: Session, registry: RulesetRegistry, lead: Lead, now: datetime | None = None
) -> dict[str, Any]:
    """The lead re-evaluated as of now (decay applied), by component and rule, every ruleset."""
    now = now or utcnow()
    scores = load_scores(session, [lead.id]).get(lead.id, {})
    stored_events: list[ScoringEvent] | None = None
    results: dict[str, dict[str, Any]] = {}
    for loaded in registry.ordered():
        row = scores.get(loaded.name)
        if row is not None and row.ruleset_sha256 == loaded.sha256:
            state = LeadState.from_json(row.state)
            result = loaded.scorer.evaluate(state, now)
        else:
            if stored_events is None:
                stored_events = load_lead_events(session, lead.id)
            _, result = loaded.scorer.replay(stored_events, now)
        results[loaded.name] = result.to_dict()
    primary = results.pop(registry.primary_name)
    return {"lead_id": lead.id, **primary, "models": results}


# ---------------------------------------------------------------------------------------------
# Changing


def _locked(session: Session, lead_id: str) -> LeadData:
    lead = lock_leads(session, [lead_id]).get(lead_id)
    if lead is None:
        raise LeadNotFound(lead_id)
    return lead


def update_attributes(
    session: Session,
    registry: RulesetRegistry,
    lead_id: str,
    attributes: dict[str, Any],
    now: datetime | None = None,
) -> LeadData:
    """Store the update as an internal event and re-score, so replays reproduce it."""
    lead = _locked(session, lead_id)
    # The time is read after the lock so that updates to one lead get increasing times.
    now = now or utcnow()
    event = ScoringEvent(
        id=new_id("attr"),
        type=ATTRIBUTES_UPDATED,
        occurred_at=now,
        properties={},
        attributes=dict(attributes),
    )
    session.execute(
        insert(Event),
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
    scores = load_scores(session, [lead.id]).get(lead.id, {})
    pending = PendingWrites()
    score_lead(session, registry, lead, scores, [event], now, pending, cause="attributes")
    pending.write(session)
    return lead


def merge_leads(
    session: Session,
    registry: RulesetRegistry,
    target_id: str,
    other_id: str,
    now: datetime | None = None,
) -> LeadData:
    """Fold ``other`` into ``target``: identities, events, outcomes and history move; re-score.

    The target is re-scored by replaying every event of both leads, which is exactly what it
    would have scored had all events named it from the start.
    """
    now = now or utcnow()
    if target_id == other_id:
        raise MergeError("other_lead_id: must differ from the lead being merged into")
    leads = lock_leads(session, [target_id, other_id])
    if target_id not in leads:
        raise LeadNotFound(target_id)
    if other_id not in leads:
        raise LeadNotFound(other_id)
    target, other = leads[target_id], leads[other_id]
    for model in (LeadIdentity, Event, Outcome, ScoreChange):
        session.execute(
            update(model).where(model.lead_id == other_id).values(lead_id=target_id),
            execution_options={"synchronize_session": False},
        )
    if target.email is None:
        target.email = other.email
    if target.external_id is None:
        target.external_id = other.external_id
    target.created_at = min(target.created_at, other.created_at)
    session.execute(delete(LeadScore).where(LeadScore.lead_id == other_id))
    session.execute(delete(Lead).where(Lead.id == other_id))
    scores = load_scores(session, [target_id]).get(target_id, {})
    pending = PendingWrites()
    score_lead(session, registry, target, scores, [], now, pending, cause="merge", replay=True)
    pending.write(session)
    return target


_ERASE_HOOK_MODULE = "leadscore_api.delivery.outbox"
_erase_hook: Callable[[Session, str], object] | None = None
if importlib.util.find_spec(_ERASE_HOOK_MODULE) is not None:
    _erase_hook = getattr(importlib.import_module(_ERASE_HOOK_MODULE), "erase_lead", None)


def erase_lead(session: Session, lead_id: str, now: datetime | None = None) -> dict[str, int]:
    """GDPR erasure: the person's data goes; only anonymous counts stay (``erasures``).

    Also asks the delivery subsystem (when installed) to drop queued messages about the lead.
    """
    now = now or utcnow()
    lead = _locked(session, lead_id)
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
    session.execute(delete(LeadScore).where(LeadScore.lead_id == lead_id))
    if _erase_hook is not None:
        _erase_hook(session, lead_id)
    session.execute(delete(Lead).where(Lead.id == lead.id))
    session.add(Erasure(erased_at=now, **counts))
    session.flush()
    return counts
