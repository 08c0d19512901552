"""Scoring one lead: fold its new events in under every ruleset and record what changed.

Ingestion, attribute updates and merges all end here, so an API change and an event produce the
same history, timers and outbound transitions. Writes are collected in :class:`PendingWrites`
and flushed once per request (one statement per table), because a batch of 100 events touches
about 100 leads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from leadscore_api.scoring import (
    LeadState,
    LoadedRuleset,
    OutOfOrderEvent,
    ScoreResult,
    ScoringEvent,
    Transition,
    transitions_between,
)
from leadscore_api.service.delivery import enqueue_transitions, lead_view
from leadscore_api.service.rulesets import RulesetRegistry
from leadscore_api.service.timers import plan_timers
from leadscore_api.storage.repositories import leads as leads_repo
from leadscore_api.storage.repositories import subscriptions as subscriptions_repo
from leadscore_api.storage.repositories import timers as timers_repo
from leadscore_api.storage.repositories.leads import LeadData, ScoreData


@dataclass
class PendingWrites:
    """Rows one request changes, written together at the end of the scoring step."""

    leads: list[LeadData] = field(default_factory=list)
    scores: list[ScoreData] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    timers: list[timers_repo.TimerPlan] = field(default_factory=list)
    #: Whether any subscription is enabled, asked once per request when a transition occurs.
    has_subscriptions: bool | None = None

    def write(self, session: Session) -> None:
        leads_repo.write_leads(session, self.leads)
        leads_repo.write_scores(session, self.scores)
        leads_repo.insert_history(session, self.history)
        timers_repo.write_timers(session, self.timers)
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
                stored_events = leads_repo.lead_events(session, lead.id)
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
        _enqueue(session, lead, transitions, event_id, primary, registry.primary, pending)
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


def _enqueue(
    session: Session,
    lead: LeadData,
    transitions: list[Transition],
    event_id: str | None,
    result: ScoreResult,
    loaded: LoadedRuleset,
    pending: PendingWrites,
) -> None:
    if not transitions:
        return
    # Without an enabled subscription there is nothing to queue: ask once per request instead
    # of once per lead (``enqueue_transitions`` reads the subscriptions itself).
    if pending.has_subscriptions is None:
        pending.has_subscriptions = subscriptions_repo.any_enabled(session)
    if not pending.has_subscriptions:
        return
    enqueue_transitions(
        session,
        lead=lead_view(lead),
        transitions=transitions,
        event_id=event_id,
        ruleset_name=loaded.name,
        ruleset_version=loaded.version,
        explanation=result.explanation,
    )
