"""The pure scoring engine: a ruleset compiled once, applied to per-lead state event by event.

Semantics that every replica, re-score and backtest must share (design §3):

* Events are applied in (occurred_at, id) order. The incremental path (:meth:`Scorer.apply`)
  only accepts an event that sorts after the last one applied; anything earlier raises
  :class:`OutOfOrderEvent` and the caller replays the lead's history (:meth:`Scorer.replay`),
  which runs the very same steps, so the two paths agree by construction and arrival order
  never changes the result.
* A limit keeps the first N matching events of each calendar-aligned window.
* Behaviour points decay as p · 2^(−age / half_life), or vanish after ``expire_after``.
* A component is clamped to [0, max] and is 0 while its gate does not hold; the score is the
  clamped sum, rounded half up.
* Stages are checked at each event's time and are sticky unless marked ``demote``.
"""

from __future__ import annotations

import json
import math
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property, lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from leadscore_api.scoring.conditions import (
    Compiled,
    Context,
    CountSpec,
    compile_condition,
    count_in_window,
)
from leadscore_api.scoring.durations import BusinessCalendar, Duration, parse_duration
from leadscore_api.scoring.model import (
    AllCondition,
    AnyCondition,
    AtLeastCondition,
    FieldCondition,
    NotCondition,
    Ruleset,
)

_LN2 = math.log(2.0)
#: The CRM event that says a follow-up was done: the next one counts from it.
FOLLOW_UP_DONE = "lead.contacted"
#: The longest wait before fading points are looked at again (see ``Scorer.next_change``).
_MAX_DECAY_STEP = 86400.0
#: The layout of :attr:`ScoreResult.explanation_inputs`, stored under the key ``"inputs"``.
EXPLANATION_INPUTS = 1


@dataclass(frozen=True, slots=True)
class ScoringEvent:
    """An event as the core sees it: no lead identity, no source, no raw payload."""

    id: str
    type: str
    occurred_at: datetime
    properties: Mapping[str, Any] = field(default_factory=dict)
    attributes: Mapping[str, Any] = field(default_factory=dict)


class OutOfOrderEvent(Exception):
    """The event sorts at or before the last applied one: replay the lead's history instead."""


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return _iso_text(ts)


@lru_cache(maxsize=16384)
def _iso_text(ts: float) -> str:
    """RFC 3339 text of a moment; the same few moments (stages, deadlines) recur in every
    evaluation of a lead, so they are formatted once."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


# ---------------------------------------------------------------------------------------------
# Compiled ruleset


@dataclass
class _Action:
    index: int
    component: int
    id: str
    points: float
    when: Compiled | None
    limit_count: int | None
    window: (
        tuple[str, float] | None
    )  # ("day", days) | ("week", weeks) | ("sec", seconds) | None = lifetime


@dataclass
class _Criterion:
    id: str
    points: float
    when: Compiled


@dataclass
class _Component:
    index: int
    name: str
    max: float
    criteria: list[_Criterion]
    actions: list[_Action]
    requires: Compiled | None
    half_life: float | None
    expire_after: float | None
    decay_text: str | None


@dataclass
class _Stage:
    name: str
    when: Compiled
    demote: bool


@dataclass
class _Sla:
    id: str
    stage: str
    within: Duration
    met_by: frozenset[str]


class LeadState:
    """What the engine keeps per lead between events. Small, and JSON-serialisable.

    Its JSON (:meth:`to_json`) is exact: ``from_json(to_json())`` followed by more events gives
    what the whole history gives, so a stored state is also a snapshot to resume from
    (:meth:`Scorer.resume`).

    Counters (``counts``, one per event condition of the ruleset) are bounded: a count with a
    window keeps the moments (and values, for ``distinct``) still inside it; a count without a
    window keeps only a number, or the distinct values seen with the moment each was first
    seen. States written before that layout ("v": 1: every moment kept) are read as they are
    and change layout, counter by counter, at the next event each one counts.
    """

    __slots__ = (
        "_crit",
        "_view",
        "actions",
        "attributes",
        "checked_ts",
        "comp_values",
        "contacted_ts",
        "counts",
        "last_id",
        "last_ts",
        "letter",
        "live",
        "n_events",
        "sla_met",
        "stages",
        "tier",
        "tier_since",
    )

    def __init__(self, n_actions: int, n_components: int, n_counts: int) -> None:
        self.attributes: dict[str, Any] = {}
        self.last_ts: float | None = None
        self.last_id: str | None = None
        # per action: [value at t_ref, t_ref, counted, limited, window key, count in window]
        self.actions: list[list[Any]] = [[0.0, 0.0, 0, 0, None, 0] for _ in range(n_actions)]
        # per component: [value at t_ref, t_ref] of its actions' points (decay applied lazily)
        self.comp_values: list[list[float]] = [[0.0, 0.0] for _ in range(n_components)]
        # contributions still alive, per action, for expire_after components: (moment, points),
        # tuples (lists when read from JSON) so that the cyclic GC stops tracking them
        self.live: dict[int, list[tuple[float, float] | list[float]]] = {}
        # per event condition: a number, {distinct value: first seen} (no window), or the
        # moments ([ts] or [(ts, value)]) inside the window
        self.counts: list[Any] = [[] for _ in range(n_counts)]
        self.stages: dict[str, dict[str, Any]] = {}
        self.tier: str | None = None
        self.tier_since: float | None = None
        self.checked_ts: float | None = None
        self.letter: str | None = None
        self.sla_met: dict[str, float] = {}
        #: The last ``lead.contacted`` (a follow-up done): recurring follow-ups count from it.
        self.contacted_ts: float | None = None
        self.n_events = 0
        self._crit: list[float] | None = None
        #: Results evaluated since the last event read their explanation through this view;
        #: the next event gives it a copy first (copy on write, see ``Scorer.evaluate``).
        self._view: weakref.ref[_View] | None = None

    def event_count(self, spec: CountSpec, now: float) -> int:
        entries = self.counts[spec.index]
        if spec.within is None:
            # The engine measures a lead only at or after its last event, so every counted
            # event is at or before ``now``: a number (or the values seen) is the count.
            kind = type(entries)
            if kind is int:
                return entries  # type: ignore[no-any-return]
            if kind is dict:
                return len(entries)
            # Layout 1 (every moment kept), until this counter's next event.
            if spec.distinct is not None:
                return len({value for ts, value in entries if ts <= now})
            return (
                len(entries)
                if not entries or entries[-1] <= now
                else sum(1 for ts in entries if ts <= now)
            )
        if spec.distinct is not None:
            return len({value for ts, value in entries if ts > now - spec.within and ts <= now})
        return count_in_window(entries, now, spec.within)

    def snapshot(self) -> LeadState:
        """A copy that later :meth:`Scorer.apply` calls on this state do not change."""
        copy = LeadState(0, 0, 0)
        copy.attributes = dict(self.attributes)
        copy.last_ts, copy.last_id = self.last_ts, self.last_id
        copy.actions = [list(slot) for slot in self.actions]
        copy.comp_values = [list(value) for value in self.comp_values]
        # Entries of live and counts are never changed in place, only added and dropped.
        copy.live = {k: list(v) for k, v in self.live.items()}
        copy.counts = [c if type(c) is int else c.copy() for c in self.counts]
        copy.stages = dict(self.stages)  # a stage's record is never changed once written
        copy.tier, copy.tier_since, copy.checked_ts = self.tier, self.tier_since, self.checked_ts
        copy.letter, copy.sla_met, copy.n_events = self.letter, dict(self.sla_met), self.n_events
        copy.contacted_ts = self.contacted_ts
        copy._crit = self._crit
        return copy

    def to_json(self) -> dict[str, Any]:
        """The state as JSON values (sharing this state's lists: serialise it before the next
        event, as the service does)."""
        return {
            "v": 2,
            "attributes": self.attributes,
            "last_ts": self.last_ts,
            "last_id": self.last_id,
            "actions": self.actions,
            "comp_values": self.comp_values,
            "live": {str(k): v for k, v in self.live.items()},
            "counts": self.counts,
            "stages": self.stages,
            "tier": self.tier,
            "tier_since": self.tier_since,
            "checked_ts": self.checked_ts,
            "letter": self.letter,
            "sla_met": self.sla_met,
            "contacted_ts": self.contacted_ts,
            "n_events": self.n_events,
            # Derived from attributes, kept so that loading a stored state costs no rule checks.
            "criteria": self._crit,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LeadState:
        """A state from :meth:`to_json` (layout 1 or 2). ``data`` is not changed by later
        events: what the engine changes in place is copied, what it only replaces is shared."""
        state = cls(0, 0, 0)
        state.attributes = dict(data["attributes"])
        state.last_ts = data["last_ts"]
        state.last_id = data["last_id"]
        state.actions = [list(a) for a in data["actions"]]
        state.comp_values = [list(c) for c in data["comp_values"]]
        state.live = {int(k): list(v) for k, v in data["live"].items()}
        state.counts = [c if type(c) is int else c.copy() for c in data["counts"]]
        state.stages = dict(data["stages"])
        state.tier = data["tier"]
        state.tier_since = data["tier_since"]
        state.checked_ts = data.get("checked_ts")
        state.letter = data["letter"]
        state.sla_met = dict(data["sla_met"])
        state.contacted_ts = data.get("contacted_ts")
        state.n_events = data["n_events"]
        state._crit = data.get("criteria")
        return state


class _View:
    """The state an evaluation's explanation reads: the live state until its next event, then
    a copy taken just before that event changes it."""

    __slots__ = ("__weakref__", "state")

    def __init__(self, state: LeadState) -> None:
        self.state = state


@dataclass
class ScoreResult:
    """A lead's scoring as of one moment, with the reasons."""

    ruleset: str
    version: int
    as_of: datetime
    letter: str | None
    score: int
    score_exact: float
    components: dict[str, float]
    tier: str | None
    stage: str
    stages_reached: dict[str, datetime]
    next_action: str | None
    next_action_due: datetime | None
    owner: str | None
    attributes: dict[str, Any]
    sla: list[dict[str, Any]]
    requalify_due: datetime | None
    #: The values the explanation is built from (see :meth:`Scorer.render_explanation`).
    explainer: Callable[[], dict[str, Any]] = field(repr=False, compare=False)
    #: ``Scorer.render_explanation`` of the ruleset that made this result.
    renderer: Callable[[Mapping[str, Any]], dict[str, Any]] = field(repr=False, compare=False)
    #: The tier workflow's next follow-up: ``due`` (RFC 3339), ``action``, ``anchor`` (when the
    #: count started: entering the tier or the last contact) and ``every`` for recurring ones.
    follow_up: dict[str, Any] | None = None

    @cached_property
    def explanation_inputs(self) -> dict[str, Any]:
        """The few JSON values :attr:`explanation` is rendered from, with the same ruleset.

        A history row stores these instead of the explanation (a tenth of the size, and no
        text built unless someone reads the row); :meth:`Scorer.render_explanation` turns them
        into exactly the explanation this result gives.
        """
        return self.explainer()

    @cached_property
    def explanation(self) -> dict[str, Any]:
        """Why the lead has this score (built on first use: most results are never explained)."""
        return self.renderer(self.explanation_inputs)

    def summary(self) -> dict[str, Any]:
        """What the service keeps on the lead row and compares to find transitions."""
        return {
            "letter": self.letter,
            "score": self.score,
            "tier": self.tier,
            "stage": self.stage,
            "stages_reached": sorted(self.stages_reached),
            "components": {k: round(v, 4) for k, v in self.components.items()},
            "next_action": self.next_action,
            "next_action_due": _iso(self.next_action_due.timestamp())
            if self.next_action_due
            else None,
            "owner": self.owner,
            # Deadlines still open: the service keeps timers for them (lead.sla_breached,
            # lead.requalify_due) and rewrites the timers when these change.
            "sla_due": {item["id"]: item["due"] for item in self.sla if item["met_at"] is None},
            "requalify_due": _iso(self.requalify_due.timestamp()) if self.requalify_due else None,
            "follow_up_due": self.follow_up["due"] if self.follow_up else None,
        }

    def to_dict(self) -> dict[str, Any]:
        """The full JSON form printed by ``leadscore rules eval`` and served by ``explain``."""
        return {
            "ruleset": {"name": self.ruleset, "version": self.version},
            "as_of": _iso(self.as_of.timestamp()),
            "letter": self.letter,
            "score": self.score,
            "score_exact": round(self.score_exact, 6),
            "tier": self.tier,
            "stage": self.stage,
            "stages_reached": {k: _iso(v.timestamp()) for k, v in self.stages_reached.items()},
            "components": {k: round(v, 6) for k, v in self.components.items()},
            "next_action": self.next_action,
            "next_action_due": _iso(self.next_action_due.timestamp())
            if self.next_action_due
            else None,
            "owner": self.owner,
            "sla": self.sla,
            "requalify_due": _iso(self.requalify_due.timestamp()) if self.requalify_due else None,
            "follow_up": self.follow_up,
            "attributes": self.attributes,
            "explanation": self.explanation,
        }


@dataclass(slots=True)
class _Measure:
    values: list[float]  # per component, gated and clamped
    raw: list[float]  # per component, before clamp
    gates: list[bool | None]
    exact: float
    score: int
    letter: str | None
    tier: str | None


class Scorer:
    """A ruleset compiled for fast, repeated use; safe to share between threads (stateless)."""

    def __init__(self, ruleset: Ruleset) -> None:
        self.ruleset = ruleset
        self.zone = ZoneInfo(ruleset.timezone)
        self.calendar = BusinessCalendar.build(
            ruleset.timezone,
            list(ruleset.calendar.working_days),
            ruleset.calendar.working_hours[0],
            ruleset.calendar.working_hours[1],
            country=ruleset.calendar.holidays.country,
            subdivision=ruleset.calendar.holidays.subdivision,
            extra=ruleset.calendar.holidays.extra,
        )
        self.counts: list[CountSpec] = []
        self.components: list[_Component] = []
        self.actions: list[_Action] = []
        self.component_index: dict[str, int] = {}
        explained_counts: list[int] = []
        for c_index, (name, spec) in enumerate(ruleset.components.items()):
            self.component_index[name] = c_index
            criteria = [
                _Criterion(c.id, c.points, compile_condition(c.when, self.counts))
                for c in spec.criteria
            ]
            actions = []
            for a in spec.actions:
                action = _Action(
                    index=len(self.actions),
                    component=c_index,
                    id=a.id,
                    points=a.points,
                    when=compile_condition(a.when, self.counts) if a.when is not None else None,
                    limit_count=a.limit.count if a.limit else None,
                    window=_window(a.limit.per) if a.limit and a.limit.per is not None else None,
                )
                self.actions.append(action)
                actions.append(action)
            half_life = expire = None
            decay_text = None
            if spec.decay is not None:
                if spec.decay.half_life is not None:
                    half_life = parse_duration(spec.decay.half_life).seconds
                    decay_text = f"half-life {spec.decay.half_life}"
                else:
                    assert spec.decay.expire_after is not None
                    expire = parse_duration(spec.decay.expire_after).seconds
                    decay_text = f"expires after {spec.decay.expire_after}"
            first_count = len(self.counts)
            requires = (
                compile_condition(spec.requires, self.counts) if spec.requires is not None else None
            )
            explained_counts.extend(range(first_count, len(self.counts)))
            self.components.append(
                _Component(
                    c_index,
                    name,
                    spec.max,
                    criteria,
                    actions,
                    requires,
                    half_life,
                    expire,
                    decay_text,
                )
            )
        self.gated = [c for c in self.components if c.requires is not None]
        self._names = [c.name for c in self.components]
        self._plan = [
            (c.index, c.half_life, c.expire_after, [a.index for a in c.actions], c.max)
            for c in self.components
        ]
        self.actions_by_type: dict[str, list[_Action]] = {}
        for c_index, spec in enumerate(ruleset.components.values()):
            for a_spec, action in zip(spec.actions, self.components[c_index].actions, strict=True):
                for event_type in [a_spec.on] if isinstance(a_spec.on, str) else a_spec.on:
                    self.actions_by_type.setdefault(event_type, []).append(action)
        self.stages = [
            _Stage(name, compile_condition(s.when, self.counts), s.demote)
            for name, s in ruleset.stages.items()
        ]
        first_count = len(self.counts)
        self.routing = [
            (rule.owner, compile_condition(rule.when, self.counts)) for rule in ruleset.routing
        ]
        explained_counts.extend(range(first_count, len(self.counts)))
        #: What an explanation's texts read besides the result: the counters of the gates and
        #: routing rules, and the attributes their conditions and the criteria name.
        self._explained_counts = explained_counts
        fields: set[str] = set()
        for spec in ruleset.components.values():
            for criterion in spec.criteria:
                _fields_read(criterion.when, fields)
            if spec.requires is not None:
                _fields_read(spec.requires, fields)
        for rule in ruleset.routing:
            _fields_read(rule.when, fields)
        self._explained_fields = sorted(fields)
        self.counts_by_type: dict[str, list[CountSpec]] = {}
        for count in self.counts:
            for event_type in count.types:
                self.counts_by_type.setdefault(event_type, []).append(count)
        self.slas = [
            _Sla(s.id, s.stage, parse_duration(s.within), frozenset(s.met_by)) for s in ruleset.sla
        ]
        self.sla_by_type: dict[str, list[_Sla]] = {}
        for sla in self.slas:
            for event_type in sla.met_by:
                self.sla_by_type.setdefault(event_type, []).append(sla)
        self.letter_from = self.component_index[ruleset.letter.from_] if ruleset.letter else None
        self.letter_bands = (
            sorted(((v, k) for k, v in ruleset.letter.bands.items()), key=lambda x: (-x[0], x[1]))
            if ruleset.letter
            else []
        )
        self.tier_bands = sorted(((v, k) for k, v in (ruleset.tiers or {}).items()), reverse=True)
        self.next_action_from = ruleset.next_action_from or (
            "workflow" if ruleset.workflows else "matrix" if ruleset.matrix else None
        )
        self._offsets: dict[int, float] = {}
        # Workflow durations, parsed once (evaluate needs them for every lead).
        self._wf_due: dict[str, Duration] = {}
        self._wf_requalify: dict[str, Duration] = {}
        self._wf_follow: dict[str, Duration] = {}
        for tier_name, workflow in (ruleset.workflows or {}).items():
            if workflow.due is not None:
                self._wf_due[tier_name] = parse_duration(workflow.due)
            if workflow.requalify_after is not None:
                self._wf_requalify[tier_name] = parse_duration(workflow.requalify_after)
            step = workflow.follow_up_within or workflow.follow_up_every
            if step is not None:
                self._wf_follow[tier_name] = parse_duration(step)
        self._deadlines: dict[tuple[float, Duration], float] = {}

    # -- state ---------------------------------------------------------------------------------

    def new_state(self) -> LeadState:
        state = LeadState(len(self.actions), len(self.components), len(self.counts))
        state.counts = [
            ([] if spec.within is not None else {} if spec.distinct is not None else 0)
            for spec in self.counts
        ]
        return state

    def apply(self, state: LeadState, event: ScoringEvent) -> None:
        """Fold one event into the state, at the event's own time."""
        ts = event.occurred_at.timestamp()
        if state.last_ts is not None and (ts, event.id) <= (state.last_ts, state.last_id or ""):
            raise OutOfOrderEvent(
                f"event {event.id} at {_iso(ts)} is not after the last applied one"
            )
        view = state._view
        if view is not None:
            # Results evaluated before this event explain the state they saw.
            state._view = None
            viewed = view()
            if viewed is not None:
                viewed.state = state.snapshot()
        state.last_ts = ts
        state.last_id = event.id
        state.n_events += 1
        touched = False
        if event.attributes:
            touched = True
            for key, value in event.attributes.items():
                if value is None:
                    state.attributes.pop(key, None)
                else:
                    state.attributes[key] = value
            state._crit = None
        event_type = event.type
        if event_type == FOLLOW_UP_DONE:
            state.contacted_ts = ts
        actions = self.actions_by_type.get(event_type)
        if actions:
            ctx = Context(state.attributes, event.properties)
            for action in actions:
                if action.when is not None and not action.when.test(ctx):
                    continue
                touched = True
                slot = state.actions[action.index]
                if action.limit_count is not None:
                    window = self._window_key(action.window, ts)
                    if slot[4] != window:
                        slot[4] = window
                        slot[5] = 0
                    if slot[5] >= action.limit_count:
                        slot[3] += 1
                        continue
                    slot[5] += 1
                slot[2] += 1
                component = self.components[action.component]
                if component.half_life is not None:
                    factor = math.exp(-(ts - slot[1]) * _LN2 / component.half_life)
                    slot[0] = slot[0] * factor + action.points
                    slot[1] = ts
                    cv = state.comp_values[action.component]
                    cv[0] = (
                        cv[0] * math.exp(-(ts - cv[1]) * _LN2 / component.half_life) + action.points
                    )
                    cv[1] = ts
                elif component.expire_after is not None:
                    alive = state.live.setdefault(action.index, [])
                    alive.append((ts, action.points))
                    cutoff = ts - component.expire_after
                    while alive and alive[0][0] <= cutoff:
                        alive.pop(0)
                else:
                    slot[0] += action.points
                    state.comp_values[action.component][0] += action.points
        specs = self.counts_by_type.get(event_type)
        if specs:
            ctx = Context(state.attributes, event.properties)
            for spec in specs:
                if spec.where is not None and not spec.where.test(ctx):
                    continue
                touched = True
                entries = state.counts[spec.index]
                if spec.within is None:
                    if spec.distinct is not None:
                        if type(entries) is not dict:
                            entries = state.counts[spec.index] = _distinct_seen(entries)
                        entries.setdefault(str(event.properties.get(spec.distinct)), ts)
                    else:
                        state.counts[spec.index] = (
                            entries + 1 if type(entries) is int else len(entries) + 1
                        )
                    continue
                if spec.distinct is not None:
                    entries.append((ts, str(event.properties.get(spec.distinct))))
                else:
                    entries.append(ts)
                cutoff = ts - spec.within
                while entries and (entries[0][0] if spec.distinct else entries[0]) <= cutoff:
                    entries.pop(0)
        slas = self.sla_by_type.get(event_type)
        if touched or slas or state.n_events == 1:
            self._checkpoint(state, ts, event.id)
        if slas:
            for sla in slas:
                reached = self._stage_reached_at(state, sla.stage)
                if reached is not None and sla.id not in state.sla_met and reached <= ts:
                    state.sla_met[sla.id] = ts

    def _checkpoint(self, state: LeadState, ts: float, event_id: str) -> None:
        """Measure the lead at an event's time: tier changes and stages reached are noted here.

        Only events that change the scoring data (points counted, counters moved, attributes
        changed) are checkpoints; between them the score can only fade, which
        :meth:`_crossing` accounts for. Both the incremental and replay paths pass here.
        """
        measure = self._measure(state, ts)
        state.checked_ts = ts
        if measure.tier != state.tier:
            state.tier = measure.tier
            state.tier_since = ts
        state.letter = measure.letter
        if self.stages:
            ctx = self._context(state, measure, ts)
            for stage in self.stages:
                if stage.name in state.stages and not stage.demote:
                    continue
                if stage.name not in state.stages and stage.when.test(ctx):
                    state.stages[stage.name] = {
                        "at": ts,
                        "event_id": event_id,
                        "because": stage.when.describe(ctx),
                    }

    def replay(
        self, events: Iterable[ScoringEvent], as_of: datetime
    ) -> tuple[LeadState, ScoreResult]:
        """Score from scratch: every event up to ``as_of``, in (occurred_at, id) order, once."""
        limit = as_of.timestamp()
        unique: dict[str, tuple[float, ScoringEvent]] = {}
        for event in events:
            ts = event.occurred_at.timestamp()
            if ts <= limit and event.id not in unique:
                unique[event.id] = (ts, event)
        state = self.new_state()
        for _, event in sorted(unique.values(), key=lambda pair: (pair[0], pair[1].id)):
            self.apply(state, event)
        return state, self.evaluate(state, as_of)

    def resume(
        self, state_json: Mapping[str, Any], events: Iterable[ScoringEvent], as_of: datetime
    ) -> tuple[LeadState, ScoreResult]:
        """Score from a stored state (a snapshot) and the events after it, as :meth:`replay`
        would from the whole history: a late event then costs the events since the nearest
        snapshot before it, not the lead's whole life.

        ``state_json`` is a :meth:`LeadState.to_json` of this ruleset (same text) that folded
        exactly the lead's events up to its last one, ``(last_ts, last_id)``. ``events`` may
        include events at or before that point (they are skipped: the snapshot has them) and
        events after ``as_of`` (left out, as :meth:`replay` does); the rest are applied once
        each, in (occurred_at, id) order. The state is new: ``state_json`` is not changed.
        """
        state = LeadState.from_json(state_json)
        limit = as_of.timestamp()
        last = (state.last_ts, state.last_id or "") if state.last_ts is not None else None
        # The first copy of an id counts, as in replay; one the snapshot has is not applied.
        unique: dict[str, tuple[float, ScoringEvent] | None] = {}
        for event in events:
            ts = event.occurred_at.timestamp()
            if ts <= limit and event.id not in unique:
                folded = last is not None and (ts, event.id) <= last
                unique[event.id] = None if folded else (ts, event)
        later = [pair for pair in unique.values() if pair is not None]
        for _, event in sorted(later, key=lambda pair: (pair[0], pair[1].id)):
            self.apply(state, event)
        return state, self.evaluate(state, as_of)

    # -- measuring -----------------------------------------------------------------------------

    def _criteria_points(self, state: LeadState) -> list[float]:
        if state._crit is None:
            ctx = Context(state.attributes)
            state._crit = [
                sum(c.points for c in component.criteria if c.when.test(ctx))
                for component in self.components
            ]
        return state._crit

    def _action_points(self, state: LeadState, component: _Component, now: float) -> float:
        if component.half_life is not None:
            value, t_ref = state.comp_values[component.index]
            if value == 0.0:
                return 0.0
            return float(value * math.exp(-(now - t_ref) * _LN2 / component.half_life))
        if component.expire_after is not None:
            cutoff = now - component.expire_after
            return sum(
                p
                for a in component.actions
                for ts, p in state.live.get(a.index, ())
                if cutoff < ts <= now
            )
        return float(state.comp_values[component.index][0])

    def _measure(self, state: LeadState, now: float) -> _Measure:
        criteria = state._crit
        if criteria is None:
            criteria = self._criteria_points(state)
        comp_values = state.comp_values
        raw: list[float] = []
        values: list[float] = []
        # _action_points inlined (same arithmetic, in the same order): this runs at every
        # checkpoint and evaluation, and several times per decay crossing.
        for index, half_life, expire_after, action_ids, cap in self._plan:
            if half_life is not None:
                value, t_ref = comp_values[index]
                points = criteria[index] + (
                    0.0
                    if value == 0.0
                    else float(value * math.exp(-(now - t_ref) * _LN2 / half_life))
                )
            elif expire_after is not None:
                cutoff = now - expire_after
                live = state.live
                points = criteria[index] + sum(
                    p for a in action_ids for ts, p in live.get(a, ()) if cutoff < ts <= now
                )
            else:
                points = criteria[index] + float(comp_values[index][0])
            raw.append(points)
            values.append(0.0 if points < 0.0 else cap if points > cap else points)
        gates: list[bool | None] = [None] * len(values)
        for component in self.gated:
            assert component.requires is not None
            named = dict(zip(self._names, values, strict=True))
            holds = component.requires.test(
                Context(state.attributes, components=named, counts=state, now=now)
            )
            gates[component.index] = holds
            if not holds:
                values[component.index] = 0.0
        total = sum(values)
        exact = round(0.0 if total < 0.0 else 100.0 if total > 100.0 else total, 9)
        score = math.floor(exact + 0.5)
        letter: str | None = None
        if self.letter_from is not None:
            fit = values[self.letter_from]
            letter = "D"
            for threshold, name in self.letter_bands:
                if fit >= threshold:
                    letter = name
                    break
        tier = None
        for threshold, tier_name in self.tier_bands:
            if score >= threshold:
                tier = tier_name
                break
        return _Measure(values, raw, gates, exact, score, letter, tier)

    def _context(self, state: LeadState, measure: _Measure, now: float) -> Context:
        return Context(
            state.attributes,
            score=measure.score,
            letter=measure.letter,
            tier=measure.tier,
            components=dict(zip(self._names, measure.values, strict=True)),
            counts=state,
            now=now,
        )

    def _stage_reached_at(self, state: LeadState, stage: str) -> float | None:
        if stage == "lead":
            return state.tier_since if state.n_events else None
        info = state.stages.get(stage)
        return None if info is None else float(info["at"])

    def _add(self, start: float, duration: Duration) -> float:
        """``calendar.add``, remembered for working-time durations: a lead's deadlines are
        asked for at every evaluation and walking the calendar costs more than the rest."""
        if not duration.business:
            return start + duration.seconds
        key = (start, duration)
        moment = self._deadlines.get(key)
        if moment is None:
            if len(self._deadlines) >= 65536:
                self._deadlines.clear()
            moment = self._deadlines[key] = self.calendar.add(start, duration)
        return moment

    def _window_key(self, window: tuple[str, float] | None, ts: float) -> int:
        if window is None:
            return 0
        kind, size = window
        local = ts + self._offset(ts)
        if kind == "day":
            return int(local // 86400 // size)
        if kind == "week":
            return int((local // 86400 + 3) // (7 * size))
        return int(local // size)

    def _offset(self, ts: float) -> float:
        hour = int(ts // 3600)
        offset = self._offsets.get(hour)
        if offset is None:
            delta = datetime.fromtimestamp(hour * 3600, UTC).astimezone(self.zone).utcoffset()
            offset = delta.total_seconds() if delta is not None else 0.0
            self._offsets[hour] = offset
        return offset

    # -- evaluation ----------------------------------------------------------------------------

    def evaluate(self, state: LeadState, as_of: datetime) -> ScoreResult:
        """The lead as of ``as_of`` (never earlier than its last applied event)."""
        now = as_of.timestamp()
        if state.last_ts is not None and now < state.last_ts:
            now = state.last_ts
        measure = self._measure(state, now)
        ctx = self._context(state, measure, now)
        stage = "lead"
        for spec in self.stages:
            if spec.demote:
                if spec.when.test(ctx):
                    stage = spec.name
            elif spec.name in state.stages:
                stage = spec.name
        tier_since = state.tier_since
        if measure.tier != state.tier:
            tier_since = self._crossing(state, now, measure.tier)
        next_action, due, _ = self._next_action(measure, tier_since)
        owner, owner_rule = self._owner(ctx)
        ruleset = self.ruleset
        requalify = None
        if ruleset.workflows and measure.tier in ruleset.workflows and tier_since is not None:
            after = self._wf_requalify.get(measure.tier)
            if after is not None:
                requalify = self._add(tier_since, after)
        follow_up = self._follow_up(state, measure.tier, tier_since)
        slas = []
        for sla in self.slas:
            reached = self._stage_reached_at(state, sla.stage)
            if reached is None:
                continue
            deadline = self._add(reached, sla.within)
            met = state.sla_met.get(sla.id)
            slas.append(
                {
                    "id": sla.id,
                    "stage": sla.stage,
                    "started_at": _iso(reached),
                    "due": _iso(deadline),
                    "met_at": _iso(met),
                    "breached": (met is None and now > deadline)
                    or (met is not None and met > deadline),
                }
            )
        # The explanation is built when it is read, from the state as it is now: results
        # share a view of the state that the next event replaces with a copy (copy on write).
        view_ref = state._view
        view = view_ref() if view_ref is not None else None
        if view is None:
            view = _View(state)
            state._view = weakref.ref(view)

        def explainer() -> dict[str, Any]:
            return self._explanation_inputs(view.state, measure, now, stage, tier_since, owner_rule)

        return ScoreResult(
            ruleset=ruleset.ruleset,
            version=ruleset.version,
            as_of=datetime.fromtimestamp(now, UTC),
            letter=measure.letter,
            score=measure.score,
            score_exact=measure.exact,
            components={c.name: measure.values[c.index] for c in self.components},
            tier=measure.tier,
            stage=stage,
            stages_reached={
                name: datetime.fromtimestamp(info["at"], UTC) for name, info in state.stages.items()
            },
            next_action=next_action,
            next_action_due=_dt(due),
            owner=owner,
            attributes=dict(state.attributes),
            sla=slas,
            requalify_due=_dt(requalify),
            explainer=explainer,
            renderer=self.render_explanation,
            follow_up=follow_up,
        )

    def _follow_up(
        self, state: LeadState, tier: str | None, tier_since: float | None
    ) -> dict[str, Any] | None:
        """The tier workflow's next follow-up, counted from entering the tier or the last contact.

        A recurring follow-up gives its first moment and ``every``: the timer that fires it
        moves itself on, and a contact (``lead.contacted``) starts the count again.
        """
        workflows = self.ruleset.workflows
        if not workflows or tier not in workflows or tier_since is None:
            return None
        workflow = workflows[tier]
        step = self._wf_follow.get(tier)
        if step is None:
            return None
        anchor = tier_since
        if state.contacted_ts is not None and state.contacted_ts > anchor:
            anchor = state.contacted_ts
        due = self._add(anchor, step)
        return {
            "due": _iso(due),
            "action": workflow.follow_up or "follow_up",
            "anchor": _iso(anchor),
            "every": str(workflow.follow_up_every) if workflow.follow_up_every else None,
            "tier": tier,
        }

    def next_change(
        self, state: LeadState, as_of: datetime, exact: float | None = None
    ) -> datetime | None:
        """The earliest moment after ``as_of`` at which time alone may change the lead's summary.

        Without new events a lead changes only because points fade (half-life), vanish
        (``expire_after``) or leave a counting window (``within``). Vanishing points and
        windows give exact moments. For fading points the moment comes from a bound: the
        score cannot move faster than the decaying points' total rate (|p| · ln 2 / half-life,
        clamping only slows it), so it cannot leave its rounded value before the margin to the
        nearer rounding boundary has been used up at that rate. Conditions on a fading component
        of their own (rare) are rechecked at least daily. The caller evaluates the lead again at
        that moment: a bound that comes early costs one evaluation that finds no change. The
        answer is at least a second away, so a lead is never looked at in a busy loop.
        """
        now = max(as_of.timestamp(), state.last_ts or 0.0)
        candidates: list[float] = []
        rate = 0.0
        for component in self.components:
            if component.half_life is not None:
                # Negative points fade too, which raises the score: the rate counts both ways.
                value = abs(self._action_points(state, component, now))
                if value > 1e-9:
                    rate += value * _LN2 / component.half_life
            elif component.expire_after is not None:
                expires = [
                    ts + component.expire_after
                    for a in component.actions
                    for ts, _ in state.live.get(a.index, ())
                    if ts + component.expire_after > now
                ]
                if expires:
                    candidates.append(min(expires))
        for spec in self.counts:
            if spec.within is None:
                continue
            entries = state.counts[spec.index]
            leaving = [
                (entry[0] if spec.distinct is not None else entry) + spec.within
                for entry in entries
            ]
            later = [moment for moment in leaving if moment > now]
            if later:
                candidates.append(min(later))
        if rate > 0.0:
            if exact is None:  # the caller's evaluation at ``as_of`` saves measuring again
                exact = self._measure(state, now).exact
            rounded = math.floor(exact + 0.5)
            margin = min(exact - (rounded - 0.5), rounded + 0.5 - exact)
            step = min(margin / rate, _MAX_DECAY_STEP)
            candidates.append(now + step)
        if not candidates:
            return None
        return datetime.fromtimestamp(max(min(candidates), now + 1.0), UTC)

    def _crossing(self, state: LeadState, now: float, tier: str | None) -> float:
        """When decay moved the lead into ``tier`` after its last event (found by bisection)."""
        low = state.checked_ts if state.checked_ts is not None else now
        high = now
        for _ in range(40):
            if high - low < 1.0:
                break
            middle = (low + high) / 2
            if self._measure(state, middle).tier == tier:
                high = middle
            else:
                low = middle
        return math.ceil(high)

    def _next_action(
        self, measure: _Measure, tier_since: float | None
    ) -> tuple[str | None, float | None, str | None]:
        ruleset = self.ruleset
        if (
            self.next_action_from == "matrix"
            and ruleset.matrix
            and ruleset.score_bands
            and measure.letter
        ):
            band = max(i for i, low in enumerate(ruleset.score_bands) if measure.score >= low)
            row = ruleset.matrix.get(measure.letter)  # type: ignore[call-overload]
            if row is None:
                return None, None, f"the matrix has no row for letter {measure.letter}"
            bands = ruleset.score_bands
            upper = f"{bands[band + 1] - 1:g}" if band + 1 < len(bands) else "100"
            return (
                row[band],
                None,
                f"matrix: letter {measure.letter} × score {measure.score} (band {bands[band]:g}–{upper})",
            )
        if (
            self.next_action_from == "workflow"
            and ruleset.workflows
            and measure.tier in ruleset.workflows
        ):
            workflow = ruleset.workflows[measure.tier]
            due = None
            reason = f"workflow for tier {measure.tier}"
            if workflow.due is not None and tier_since is not None:
                due = self._add(tier_since, self._wf_due[measure.tier])
                reason += f": {workflow.action} within {workflow.due} of entering the tier at {_iso(tier_since)}"
            return workflow.action, due, reason
        return None, None, None

    def _owner(self, ctx: Context) -> tuple[str | None, int | None]:
        """The owner, and the index of the routing rule that chose it (None: the default)."""
        for i, (owner, rule) in enumerate(self.routing):
            if rule.test(ctx):
                return owner, i
        if self.ruleset.default_owner:
            return self.ruleset.default_owner, None
        return None, None

    def _explanation_inputs(
        self,
        state: LeadState,
        measure: _Measure,
        now: float,
        stage: str,
        tier_since: float | None,
        owner_rule: int | None,
    ) -> dict[str, Any]:
        """What :meth:`render_explanation` needs of the state, as JSON values: the attributes
        the explained conditions read, the counts their gates and routing rules read, each
        counted action's points, and the stages reached. No text is built here."""
        attributes = state.attributes
        actions: list[list[Any]] = []
        for component in self.components:
            for action in component.actions:
                slot = state.actions[action.index]
                if not slot[2] and not slot[3]:
                    continue
                if component.half_life is not None:
                    points = slot[0] * math.exp(-(now - slot[1]) * _LN2 / component.half_life)
                elif component.expire_after is not None:
                    cutoff = now - component.expire_after
                    points = sum(
                        p for ts, p in state.live.get(action.index, ()) if cutoff < ts <= now
                    )
                else:
                    points = slot[0]
                actions.append([action.index, round(points, 4), slot[2], slot[3]])
        counts = self.counts
        explained = {k: attributes[k] for k in self._explained_fields if k in attributes}
        inputs: dict[str, Any] = {
            "inputs": EXPLANATION_INPUTS,
            "now": now,
            "score": measure.score,
            "exact": measure.exact,
            "letter": measure.letter,
            "tier": measure.tier,
            "values": list(measure.values),
            "raw": list(measure.raw),
            "gates": list(measure.gates),
            "attributes": explained,
            "counts": [state.event_count(counts[i], now) for i in self._explained_counts],
            "actions": actions,
            "stages": dict(state.stages),
            "stage": stage,
            "tier_since": tier_since,
            "owner_rule": owner_rule,
        }
        if not _portable(explained):
            # The texts show these values as the engine has them: kept as JSON text.
            inputs["attributes"] = None
            inputs["attributes_text"] = json.dumps(explained)
        return inputs

    def render_explanation(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The explanation of a result from its :attr:`ScoreResult.explanation_inputs` (read
        back from storage or not): the same dict, key for key, the result itself gives."""
        now: float = inputs["now"]
        measure = _Measure(
            inputs["values"],
            inputs["raw"],
            inputs["gates"],
            inputs["exact"],
            inputs["score"],
            inputs["letter"],
            inputs["tier"],
        )
        attributes: Mapping[str, Any] | None = inputs["attributes"]
        if attributes is None:
            attributes = json.loads(inputs["attributes_text"])
        counts = _StoredCounts(dict(zip(self._explained_counts, inputs["counts"], strict=True)))
        named = dict(zip(self._names, measure.values, strict=True))
        attr_ctx = Context(attributes)
        counted = {index: (points, n, over) for index, points, n, over in inputs["actions"]}
        components: dict[str, Any] = {}
        for component in self.components:
            rules: list[dict[str, Any]] = []
            for criterion in component.criteria:
                if criterion.when.test(attr_ctx):
                    rules.append(
                        {
                            "rule": criterion.id,
                            "kind": "criterion",
                            "points": criterion.points,
                            "because": criterion.when.describe(attr_ctx),
                        }
                    )
            for action in component.actions:
                found = counted.get(action.index)
                if found is None:
                    continue
                entry: dict[str, Any] = {
                    "rule": action.id,
                    "kind": "action",
                    "points": found[0],
                    "points_each": action.points,
                    "events_counted": found[1],
                    "events_over_limit": found[2],
                }
                if component.decay_text:
                    entry["decay"] = component.decay_text
                rules.append(entry)
            gate = measure.gates[component.index]
            info: dict[str, Any] = {
                "points": round(measure.values[component.index], 4),
                "max": component.max,
                "raw": round(measure.raw[component.index], 4),
                "clamped": not (0.0 <= measure.raw[component.index] <= component.max),
                "rules": rules,
            }
            if component.requires is not None:
                gate_ctx = Context(attributes, components=named, counts=counts, now=now)
                info["gate"] = {
                    "holds": bool(gate),
                    "because": component.requires.describe(gate_ctx),
                }
            components[component.name] = info
        explanation: dict[str, Any] = {
            "score": {
                "value": measure.score,
                "exact": round(measure.exact, 6),
                "because": "sum of components, clamped to 0–100, rounded half up",
            },
            "components": components,
        }
        if self.letter_from is not None and measure.letter is not None:
            source = self.components[self.letter_from]
            threshold = (
                next(t for t, name in self.letter_bands if name == measure.letter)
                if any(name == measure.letter for _, name in self.letter_bands)
                else 0
            )
            explanation["letter"] = {
                "value": measure.letter,
                "because": f"{source.name} {measure.values[self.letter_from]:g} ≥ {threshold:g} (band {measure.letter})",
            }
        if measure.tier is not None:
            threshold = next(t for t, name in self.tier_bands if name == measure.tier)
            explanation["tier"] = {
                "value": measure.tier,
                "because": f"score {measure.score} ≥ {threshold:g}",
            }
        explanation["stage"] = {
            "value": inputs["stage"],
            "reached": {
                name: {
                    "at": _iso(info["at"]),
                    "event_id": info["event_id"],
                    "because": info["because"],
                }
                for name, info in inputs["stages"].items()
            },
        }
        next_action, _, action_reason = self._next_action(measure, inputs["tier_since"])
        if next_action is not None:
            explanation["next_action"] = {"value": next_action, "because": action_reason}
        owner_rule: int | None = inputs["owner_rule"]
        if owner_rule is not None:
            owner, rule = self.routing[owner_rule]
            ctx = Context(
                attributes,
                score=measure.score,
                letter=measure.letter,
                tier=measure.tier,
                components=named,
                counts=counts,
                now=now,
            )
            explanation["owner"] = {
                "value": owner,
                "because": _routing_reason(owner_rule + 1, rule, ctx),
            }
        elif self.ruleset.default_owner:
            explanation["owner"] = {
                "value": self.ruleset.default_owner,
                "because": "no routing rule matched: default owner",
            }
        return explanation


class _StoredCounts:
    """Event counts read back with an explanation's inputs, in place of the lead state."""

    __slots__ = ("counts",)

    def __init__(self, counts: dict[int, int]) -> None:
        self.counts = counts

    def event_count(self, spec: CountSpec, now: float) -> int:
        return self.counts[spec.index]


def _portable(value: Any) -> bool:
    """Whether every JSON store gives ``value`` back as it is: PostgreSQL's ``jsonb`` keeps
    numbers as decimals, so ``-0.0`` and floats of 1e16 or more would come back changed."""
    kind = type(value)
    if kind is float:
        return 0.0 < abs(value) < 1e16 or (math.copysign(1.0, value) > 0.0 and value == 0.0)
    if kind is dict:
        return all(_portable(item) for item in value.values())
    if kind is list:
        return all(_portable(item) for item in value)
    return True


def _fields_read(condition: Any, fields: set[str]) -> None:
    """Add the attributes ``condition`` reads to ``fields`` (an event condition's ``where``
    reads the event, and its words are fixed when compiled)."""
    if isinstance(condition, FieldCondition):
        fields.add(condition.field)
    elif isinstance(condition, AllCondition):
        for part in condition.all:
            _fields_read(part, fields)
    elif isinstance(condition, AnyCondition):
        for part in condition.any:
            _fields_read(part, fields)
    elif isinstance(condition, AtLeastCondition):
        for part in condition.of:
            _fields_read(part, fields)
    elif isinstance(condition, NotCondition):
        _fields_read(condition.not_, fields)


def _routing_reason(number: int, rule: Compiled, ctx: Context) -> str:
    return f"routing rule {number}: {rule.describe(ctx)}"


def _distinct_seen(entries: list[Any]) -> dict[str, float]:
    """A layout-1 distinct counter without a window (every (moment, value) kept) as the values
    seen, each with its first moment; only called at a later event, so all of them count."""
    seen: dict[str, float] = {}
    for ts, value in entries:
        seen.setdefault(value, ts)
    return seen


def _window(per: str | int) -> tuple[str, float]:
    duration = parse_duration(per)
    if duration.unit == "d" and duration.amount == int(duration.amount):
        return ("day", duration.amount)
    if duration.unit == "w" and duration.amount == int(duration.amount):
        return ("week", duration.amount)
    return ("sec", duration.seconds)


# ---------------------------------------------------------------------------------------------
# Transitions


@dataclass(frozen=True)
class Transition:
    """A change worth telling subscribers about."""

    type: str
    from_value: str | None
    to_value: str | None
    at: datetime
    event_id: str | None


def transitions_between(
    previous: Mapping[str, Any] | None, result: ScoreResult, event_id: str | None, at: datetime
) -> list[Transition]:
    """Transitions from a lead's previous summary to a new result.

    A new lead (``previous`` is None) starts at stage ``lead`` with no tier or letter; its first
    tier and letter are not reported as changes, its first stages are.
    """
    old_stage = previous.get("stage", "lead") if previous else "lead"
    old_reached = set(previous.get("stages_reached", [])) if previous else set()
    out: list[Transition] = []
    if result.stage != old_stage:
        out.append(Transition("lead.stage_changed", old_stage, result.stage, at, event_id))
    for name in result.stages_reached:
        if name not in old_reached:
            out.append(Transition(f"lead.{name}", old_stage, name, at, event_id))
    if previous is not None:
        if previous.get("tier") != result.tier:
            out.append(
                Transition("lead.tier_changed", previous.get("tier"), result.tier, at, event_id)
            )
        if previous.get("letter") != result.letter:
            out.append(
                Transition(
                    "lead.letter_changed", previous.get("letter"), result.letter, at, event_id
                )
            )
    return out
