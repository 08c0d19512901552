"""Queueing what the CRMs must hear, in the transaction that changed the lead.

Scoring (:mod:`leadscore_api.service.scoring`) calls :func:`queue_lead_change` for every lead it
rescored; merges and erasures (:mod:`leadscore_api.service.leads`) call :func:`pass_on_merge`
and :func:`pass_on_erase`. Nothing here talks to a CRM: the rows commit or roll back with the
change, and the CRM dispatcher (``delivery/crm.py``) sends them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from leadscore_api.delivery.crm import ERASE, MERGE, SYNC, TASK
from leadscore_api.delivery.payloads import rfc3339
from leadscore_api.scoring import LoadedRuleset, ScoreResult, Transition
from leadscore_api.storage.crm_models import CrmRecord
from leadscore_api.storage.delivery_models import OutboxMessage
from leadscore_api.storage.ids import new_id
from leadscore_api.storage.repositories import crm as crm_repo
from leadscore_api.storage.repositories import outbox as outbox_repo
from leadscore_api.storage.repositories.leads import LeadData

#: The lead columns a connector writes: a change to any of them is a sync.
SYNCED_COLUMNS = ("letter", "score", "tier", "stage", "owner", "next_action", "next_action_due")
#: When the ruleset gives no deadline, the hand-over task is due in a day (the usual
#: "first contact within 24 hours").
DEFAULT_TASK_HOURS = 24

Targets = list[tuple[str, str]]


def synced_state(lead: LeadData) -> tuple[Any, ...]:
    return tuple(getattr(lead, name) for name in SYNCED_COLUMNS)


def targets(session: Session) -> Targets:
    """(name, subscription id) of the enabled connectors."""
    return crm_repo.enabled_targets(session)


def _message(
    subscription_id: str,
    event_type: str,
    lead_id: str | None,
    payload: dict[str, Any],
    now: datetime,
) -> OutboxMessage:
    return OutboxMessage(
        id=new_id("msg"),
        subscription_id=subscription_id,
        event_type=event_type,
        lead_id=lead_id,
        event_id=None,
        payload={"type": event_type, **payload},
        next_attempt_at=now,
        created_at=now,
    )


def queue_sync(session: Session, connectors: Targets, lead_id: str, now: datetime) -> None:
    """One ``crm.sync`` per connector. No lead data in it: the dispatcher sends the lead's
    state as it is when the message goes out, so the queued syncs of one lead coalesce."""
    outbox_repo.add_messages(
        session,
        [
            _message(sub_id, SYNC, lead_id, {"connector": name, "lead_id": lead_id}, now)
            for name, sub_id in connectors
        ],
    )


def handover_stage(loaded: LoadedRuleset) -> str | None:
    """The stage at which the lead is handed to sales, as the reports count it
    (``service/reports.py``): the stage of the SLA that ``lead.contacted`` keeps, else SQL."""
    ruleset = loaded.ruleset
    stages = list(ruleset.stages)
    sql = "sql" if "sql" in stages else stages[1] if len(stages) > 1 else None
    return next((rule.stage for rule in ruleset.sla if "lead.contacted" in rule.met_by), sql)


def _parse(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def contact_sla_ids(loaded: LoadedRuleset) -> frozenset[str]:
    """The SLAs that the owner's first contact (``lead.contacted``) keeps: the task is a call."""
    return frozenset(rule.id for rule in loaded.ruleset.sla if "lead.contacted" in rule.met_by)


def task_payload(
    lead: LeadData,
    result: ScoreResult,
    stage: str,
    now: datetime,
    contact_slas: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The owner's task: call the lead by the first-contact deadline of the hand-over SLA
    ("call within 24 h" in both bundled rulesets), else by the stage's first open deadline."""
    open_items = [
        item for item in result.sla if item.get("stage") == stage and item.get("met_at") is None
    ]
    preferred = [item for item in open_items if item.get("id") in contact_slas]
    due = next((_parse(item.get("due")) for item in preferred or open_items), None)
    if due is None or due <= now:
        due = (
            result.next_action_due
            if result.next_action_due and result.next_action_due > now
            else None
        )
    if due is None:
        due = now + timedelta(hours=DEFAULT_TASK_HOURS)
    hours = max(1, math.ceil((due - now).total_seconds() / 3600))
    action = (result.next_action or "contact").replace("_", " ")
    who = lead.email or lead.external_id or lead.id
    subject = f"{action.capitalize()} {who} within {hours} h"
    body = (
        f"Lead handed over to sales (stage {stage}): letter {result.letter}, score "
        f"{result.score}, tier {result.tier}. Next action: {action}, due "
        f"{rfc3339(due)}. Lead id {lead.id}."
    )
    return {
        "lead_id": lead.id,
        "owner": lead.owner,
        "subject": subject,
        "body": body,
        "due_at": rfc3339(due),
    }


def queue_lead_change(
    session: Session,
    connectors: Targets,
    lead: LeadData,
    *,
    changed: bool,
    transitions: Sequence[Transition],
    result: ScoreResult,
    loaded: LoadedRuleset,
    now: datetime,
) -> None:
    """A sync when a synced column changed; a task when the lead reached the hand-over stage."""
    if not connectors:
        return
    if changed:
        queue_sync(session, connectors, lead.id, now)
    stage = handover_stage(loaded)
    if stage is None or not any(t.type == f"lead.{stage}" for t in transitions):
        return
    payload = task_payload(lead, result, stage, now, contact_sla_ids(loaded))
    outbox_repo.add_messages(
        session,
        [
            _message(sub_id, TASK, lead.id, {"connector": name, **payload}, now)
            for name, sub_id in connectors
        ],
    )


def pass_on_merge(session: Session, target_id: str, other_id: str, now: datetime) -> None:
    """Before ``other`` is folded into ``target``: where both have a record in one CRM, a
    ``crm.merge`` asks the CRM to merge them; where only ``other`` has one, it becomes the
    target's record. Call before the other lead's rows are deleted."""
    subscriptions = {name: sub_id for name, sub_id in crm_repo.enabled_targets(session)}
    mine = {r.connector: r for r in crm_repo.records_of_lead(session, target_id)}
    gone: list[int] = []
    moved: list[CrmRecord] = []
    messages: list[OutboxMessage] = []
    for record in crm_repo.records_of_lead(session, other_id):
        survivor = mine.get(record.connector)
        if survivor is None:
            moved.append(record)
            continue
        gone.append(record.id)
        sub_id = subscriptions.get(record.connector)
        if sub_id is None or (survivor.object_type, survivor.record_id) == (
            record.object_type,
            record.record_id,
        ):
            continue
        payload = {
            "connector": record.connector,
            "lead_id": target_id,
            "survivor": {"object_type": survivor.object_type, "record_id": survivor.record_id},
            "merged": {"object_type": record.object_type, "record_id": record.record_id},
        }
        messages.append(_message(sub_id, MERGE, target_id, payload, now))
    crm_repo.move_records(session, moved, target_id, now)
    crm_repo.delete_records(session, other_id, gone)
    outbox_repo.add_messages(session, messages)


def pass_on_erase(session: Session, lead_id: str, now: datetime) -> int:
    """An erased person is erased from what we wrote: a ``crm.erase`` per connector holding a
    record of the lead, carrying the record's reference only (no name, no email), and the
    lead's ``crm_records`` rows removed. Returns how many erasures were queued."""
    subscriptions = {name: sub_id for name, sub_id in crm_repo.enabled_targets(session)}
    records = crm_repo.records_of_lead(session, lead_id)
    messages = [
        _message(
            subscriptions[record.connector],
            ERASE,
            None,
            {
                "connector": record.connector,
                "record": {"object_type": record.object_type, "record_id": record.record_id},
            },
            now,
        )
        for record in records
        if record.connector in subscriptions
    ]
    crm_repo.delete_records(session, lead_id, [record.id for record in records])
    outbox_repo.add_messages(session, messages)
    return len(messages)
