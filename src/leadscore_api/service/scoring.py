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

from leadscore_api import json_codec
from leadscore_api.scoring import (
    LeadState,
    LoadedRuleset,
    OutOfOrderEvent,
    ScoreResult,
    ScoringEvent,
    Transition,
    transitions_between,
)
from leadscore_api.service import crm_outbox, reps
from leadscore_api.service.delivery import enqueue_transitions, lead_view
from leadscore_api.service.rulesets import RulesetRegistry
from leadscore_api.service.timers import plan_timers
from leadscore_api.storage.repositories import leads as leads_repo
from leadscore_api.storage.repositories import snapshots as snapshots_repo
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
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    #: Whether any subscription is enabled, asked once per request when a transition occurs.
    has_subscriptions: bool | None = None
    #: The enabled CRM connectors (name, subscription id), asked once per request.
    crm_targets: crm_outbox.Targets | None = None

    def write(self, session: Session) -> None:
        leads_repo.write_leads(session, self.leads)
        leads_repo.write_scores(session, self.scores)
        leads_repo.insert_history(session, self.history)
        timers_repo.write_timers(session, self.timers)
        snapshots_repo.insert_snapshots(session, self.snapshots)
        self.snapshots.clear()
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

    The history gets one row per visible change, dated by the event that made it: a lead with
    several events in one request is evaluated after each of them (the last one as of now), so
    its timeline reads the same whether the events came one by one or in a batch. Changes that
    only time made (``cause="time"``, from the freshness sweep) are dated ``now``.

    A running challenger (A/B test) is folded in the same way and its row stored under its own
    name, but nothing else follows from it: no history, transitions, timers, routing, nor any
    change to the lead's columns (``models`` included).
    """
    update_ = LeadUpdate(lead=lead)
    synced_before = crm_outbox.synced_state(lead)
    visible_change = False
    written = 0
    primary_assignee: str | None = None
    ordered_new = sorted(new_events, key=lambda e: (e.occurred_at, e.id))
    latest = max((e.occurred_at for e in ordered_new), default=now)
    as_of = max(now, latest)
    final: dict[str, ScoreResult] = {}
    summaries: dict[str, dict[str, Any]] = {}

    for loaded in (*registry.ordered(), *registry.challengers.values()):
        scorer = loaded.scorer
        challenger = registry.is_challenger(loaded)
        row = scores.get(loaded.name)
        previous: dict[str, Any] | None = dict(row.summary) if row is not None else None
        must_replay = replay or (row is None and not is_new)
        must_replay = must_replay or (row is not None and row.ruleset_sha256 != loaded.sha256)
        state: LeadState | None = None
        steps: list[_Step] = []
        snapshots: list[dict[str, Any]] = []
        if not must_replay:
            state = LeadState.from_json(row.state) if row is not None else scorer.new_state()
            try:
                for position, event in enumerate(ordered_new):
                    scorer.apply(state, event)
                    _take_snapshot(snapshots, lead.id, loaded, state, event)
                    if position < len(ordered_new) - 1 and not challenger:
                        steps.append(_Step.of(event, scorer.evaluate(state, event.occurred_at)))
            except OutOfOrderEvent:
                must_replay = True
                steps.clear()
                snapshots.clear()
        if must_replay or state is None:
            # From the nearest snapshot before the earliest new event, unless the stored state
            # cannot be trusted (other rules, a merge, no state yet): then from the start.
            from_start = replay or row is None or row.ruleset_sha256 != loaded.sha256
            state, as_of = _replay(
                session,
                loaded,
                lead.id,
                None if from_start or not ordered_new else ordered_new[0],
                as_of,
                snapshots,
            )
            result = scorer.evaluate(state, as_of)
        else:
            result = scorer.evaluate(state, as_of)
        pending.snapshots.extend(snapshots)
        last_step = _Step.of(ordered_new[-1] if ordered_new else None, result)
        steps.append(last_step)
        # The step's own dict: the assignee is added to it, and it is stored as the row's
        # summary and as the history row's ``current``, all the same value.
        summary = last_step.summary
        if not challenger:
            final[loaded.name] = result
            summaries[loaded.name] = summary
        is_primary = loaded.name == registry.primary_name

        if is_primary and _timers_changed(previous, summary):
            pending.timers.append(
                plan_timers(
                    lead.id,
                    loaded.name,
                    result.sla,
                    result.requalify_due,
                    result.tier,
                    result.follow_up,
                )
            )
        assignee: str | None = None
        if is_primary:
            lead.next_change_at = scorer.next_change(state, as_of, result.score_exact)
            written = len(pending.history)
            assignee = _assignee(session, lead, result)
            summary["assignee"] = assignee
            primary_assignee = assignee
        if not challenger:
            _record_changes(
                lead, loaded, previous, steps, cause, now, pending, update_, is_primary, assignee
            )
        if is_primary:
            visible_change = len(pending.history) > written
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
    # A sweep (or re-score) that finds nothing visible keeps updated_at: CRMs syncing with updated_since
    # must not fetch every lead each time its decimals fade a little.
    touch = visible_change or cause not in ("time", "rescore")
    _apply_summary(
        lead, registry, primary, final, summaries, now, touch=touch, assignee=primary_assignee
    )
    pending.leads.append(lead)
    for event_id, transitions in update_.transitions.items():
        _enqueue(session, lead, transitions, event_id, primary, registry.primary, pending)
    if pending.crm_targets is None:
        pending.crm_targets = crm_outbox.targets(session)
    if pending.crm_targets:
        crm_outbox.queue_lead_change(
            session,
            pending.crm_targets,
            lead,
            changed=is_new or crm_outbox.synced_state(lead) != synced_before,
            transitions=[t for found in update_.transitions.values() for t in found],
            result=primary,
            loaded=registry.primary,
            now=now,
        )
    return update_


#: Events between two snapshots of a lead's state: a late event replays at most this many
#: events besides those that happened after it.
SNAPSHOT_EVERY = 100


def _take_snapshot(
    snapshots: list[dict[str, Any]],
    lead_id: str,
    loaded: LoadedRuleset,
    state: LeadState,
    event: ScoringEvent,
) -> None:
    """Copy the state every ``SNAPSHOT_EVERY`` events (serialised now: the state moves on)."""
    if state.n_events % SNAPSHOT_EVERY:
        return
    snapshots.append(
        {
            "lead_id": lead_id,
            "ruleset_name": loaded.name,
            "n_events": state.n_events,
            "ruleset_sha256": loaded.sha256,
            "event_occurred_at": event.occurred_at,
            "event_id": event.id,
            "state": json_codec.loads(json_codec.dumps(state.to_json())),
        }
    )


def _replay(
    session: Session,
    loaded: LoadedRuleset,
    lead_id: str,
    first_new: ScoringEvent | None,
    as_of: datetime,
    snapshots: list[dict[str, Any]],
) -> tuple[LeadState, datetime]:
    """The lead's state rebuilt from its stored events, and the moment to score it as of.

    With ``first_new`` (the earliest event not yet folded in) it starts from the nearest
    snapshot before that event and reads only the events after the snapshot; without, or when
    there is none, from the lead's first event. Snapshots after the starting point are
    dropped and taken again on the way, since events now sit between them.
    """
    scorer = loaded.scorer
    base = None
    if first_new is not None:
        base = snapshots_repo.nearest_before(
            session, lead_id, loaded.name, loaded.sha256, first_new.occurred_at, first_new.id
        )
    if base is None:
        snapshots_repo.drop(session, lead_id, loaded.name)
        state = scorer.new_state()
        events = leads_repo.lead_events(session, lead_id)
    else:
        snapshots_repo.drop(session, lead_id, loaded.name, after=base.n_events)
        state = LeadState.from_json(base.state)
        events = leads_repo.lead_events(
            session, lead_id, after=(base.event_occurred_at, base.event_id)
        )
    # Never score "as of" a moment before a stored event: a concurrent writer's clock (or a
    # tolerated future timestamp) may be ahead of ours.
    as_of = max([as_of, *(e.occurred_at for e in events)])
    for event in events:
        scorer.apply(state, event)
        _take_snapshot(snapshots, lead_id, loaded, state, event)
    return state, as_of


@dataclass(frozen=True)
class _Step:
    """The lead as one event left it (``event`` None: as time left it)."""

    event: ScoringEvent | None
    result: ScoreResult
    #: ``result.summary()``, built once: it is compared, stored and written to the history.
    summary: dict[str, Any]

    @classmethod
    def of(cls, event: ScoringEvent | None, result: ScoreResult) -> _Step:
        return cls(event, result, result.summary())


def _record_changes(
    lead: LeadData,
    loaded: LoadedRuleset,
    previous: dict[str, Any] | None,
    steps: Sequence[_Step],
    cause: str,
    now: datetime,
    pending: PendingWrites,
    update_: LeadUpdate,
    is_primary: bool,
    assignee: str | None,
) -> None:
    """One history row (and, for the primary, its transitions) per step that changed the lead.

    The last step's summary names the rep the lead is assigned to (``assignee``), so the
    timeline shows who owned the lead from each change on.
    """
    before = previous
    folded: list[str] = []
    for position, step in enumerate(steps):
        if step.event is not None:
            folded.append(step.event.id)
        summary = step.summary
        if is_primary and position == len(steps) - 1:
            summary["assignee"] = assignee
        if before is not None and _visible(summary) == _visible(before):
            continue
        event_id = step.event.id if step.event is not None else None
        changed_at = step.event.occurred_at if step.event is not None and cause == "event" else now
        # What the explanation is rendered from when the row is read (service/explanations.py).
        explanation = step.result.explanation_inputs
        if cause == "time":
            explanation = {**explanation, "because": _time_reason(loaded, before, summary)}
        if is_primary:
            found = _first_crossings(
                lead, before, transitions_between(before, step.result, event_id, changed_at)
            )
            if found:
                update_.transitions.setdefault(event_id, []).extend(found)
        pending.history.append(
            {
                "lead_id": lead.id,
                "ruleset_name": loaded.name,
                "ruleset_version": loaded.version,
                "ruleset_sha256": loaded.sha256,
                "cause": cause,
                "event_id": event_id,
                "event_ids": folded,
                "changed_at": changed_at,
                "previous": before,
                "current": summary,
                "explanation": explanation,
            }
        )
        before = summary
        folded = []


def _first_crossings(
    lead: LeadData, before: dict[str, Any] | None, found: list[Transition]
) -> list[Transition]:
    """``found`` without the ``lead.<stage>`` transitions subscribers have already been sent.

    The timeline a late event replays may reach a stage later than before, or not at all until
    a later event; the lead then "reaches" it again, but for the subscribers it is the same
    crossing. What was announced is remembered on the lead (the stages of its stored summary
    count too: leads scored before the column existed). ``lead.stage_changed`` still follows
    the current stage both ways.
    """
    announced = set(lead.announced_stages)
    if before is not None:
        announced.update(before.get("stages_reached", ()))
    reached = {t.to_value for t in found if t.to_value and t.type == f"lead.{t.to_value}"}
    kept = [t for t in found if not (t.type == f"lead.{t.to_value}" and t.to_value in announced)]
    announced |= reached
    if announced != set(lead.announced_stages):
        lead.announced_stages = sorted(announced)
    return kept


def _time_reason(
    loaded: LoadedRuleset, before: dict[str, Any] | None, summary: dict[str, Any]
) -> str:
    """A sentence for a change no event made: what moved, and which fading rule moved it."""
    moved = [
        f"{name} {before.get(name) if before else None} → {summary.get(name)}"
        for name in ("score", "tier", "letter", "stage", "next_action")
        if (before or {}).get(name) != summary.get(name)
    ]
    fading = sorted(
        {f"{c.name} points ({c.decay_text})" for c in loaded.scorer.components if c.decay_text}
    )
    why = "; ".join(fading) if fading else "counting windows moved on"
    return f"changed with time, no event: {', '.join(moved) or 'summary'}; because {why}"


def _timers_changed(previous: dict[str, Any] | None, summary: dict[str, Any]) -> bool:
    """Whether the lead's open deadlines moved, so its timers must be rewritten."""
    before = previous or {}
    return any(
        before.get(key) != summary.get(key) for key in ("sla_due", "requalify_due", "follow_up_due")
    )


_NOT_COMPARED = frozenset({"components", "assignee"})


def _visible(summary: dict[str, Any]) -> dict[str, Any]:
    """What a history row is written for: letter, score, tier, stage, action, routed team.

    Components are left out of the comparison because decay moves them a little at every
    evaluation; a change that matters shows in the rounded score. The assigned rep is recorded
    with the change that routed the lead, not as a change of its own.
    """
    return {key: value for key, value in summary.items() if key not in _NOT_COMPARED}


def _assignee(session: Session, lead: LeadData, result: ScoreResult) -> str | None:
    """The rep who owns the lead: kept while still routed to the same team, else chosen anew.

    ``result.owner`` is the team the routing rules picked. The directory is asked only when the
    team changed or the lead has no rep yet, so an ordinary event costs no query here.
    """
    team = result.owner
    if not team:
        return None
    if lead.team == team and lead.owner not in (None, team):
        return lead.owner
    return reps.assign_owner(session, lead.id, team, result.attributes, lead.owner)


def _apply_summary(
    lead: LeadData,
    registry: RulesetRegistry,
    primary: ScoreResult,
    final: dict[str, ScoreResult],
    summaries: dict[str, dict[str, Any]],
    now: datetime,
    *,
    touch: bool,
    assignee: str | None,
) -> None:
    summary = summaries[registry.primary_name]
    lead.attributes = dict(primary.attributes)
    lead.letter = primary.letter
    lead.score = primary.score
    lead.tier = primary.tier
    lead.stage = primary.stage
    lead.components = summary["components"]
    lead.next_action = primary.next_action
    lead.next_action_due = primary.next_action_due
    # The rep when the directory has one for the routed team, else the team itself.
    lead.team = primary.owner
    lead.owner = assignee or primary.owner
    lead.ruleset_name = registry.primary.name
    lead.ruleset_version = registry.primary.version
    lead.models = {
        name: {**summaries[name], "ruleset": {"name": name, "version": result.version}}
        for name, result in final.items()
        if name != registry.primary_name
    }
    if touch:
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
