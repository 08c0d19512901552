"""Replaying one lead's history for a backtest, keeping what the outcome metrics need.

A backtest asks more of a replay than the service does: not only where the lead ends up, but
*when* its score first reached each level (the threshold sweep moves the SQL line and needs the
moment a lead would have crossed it), what the sales team saw *before* the CRM reported an
opportunity (so that rules which score the outcome events themselves cannot leak the answer
into the prediction), and, for calibration, how many points each rule gave at that moment.

The score only rises at the events the engine checks (between them points can only fade), so
the peaks are recorded at those checkpoints: :class:`TracingScorer` keeps the measure the
engine takes at each one instead of measuring the lead a second time. This module is pure,
like the rest of ``scoring``; the service streams the events in and aggregates the traces
(:mod:`leadscore_api.scoring.backtest_metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from leadscore_api.scoring.conditions import Context
from leadscore_api.scoring.engine import _LN2, LeadState, Scorer, ScoringEvent, _Measure
from leadscore_api.scoring.model import (
    AllCondition,
    AnyCondition,
    AtLeastCondition,
    FieldCondition,
    NotCondition,
    Ruleset,
)

#: CRM events that say the lead became an opportunity (a won deal implies one).
OPPORTUNITY_TYPES = frozenset({"opportunity.created", "deal.won"})
WON_TYPE = "deal.won"
LOST_TYPE = "deal.lost"


@dataclass(slots=True)
class LeadTrace:
    """One lead under one ruleset, as the outcome metrics need it (times are POSIX seconds)."""

    lead_id: str
    #: The lead's first event: the start of its funnel.
    first_ts: float
    #: The first ``opportunity.created`` or ``deal.won``, if any, up to the end of the period.
    opportunity_ts: float | None
    won: bool
    lost: bool
    #: Where the lead ends at the end of the period (what a re-score would store).
    score: int
    letter: str | None
    tier: str | None
    stage: str
    #: The highest score reached before the opportunity (or by the end, without one): the
    #: score the sales team could act on, used for bands, AUC and the sweep.
    decision_score: int
    #: ``(score, ts)`` each time a new peak was reached before the opportunity: the first
    #: entry with a score ≥ T is when the lead crossed T.
    ladder: list[tuple[int, float]]
    #: First arrival at each stage (sticky stages; the engine's own record).
    stages_ts: dict[str, float]
    #: The highest stage reached before the opportunity (or by the end), ``lead`` if none.
    decision_stage: str
    #: Per rule id, the rule's units at decision time (criteria 1/0; actions: points ÷ points
    #: each, decay included), only when asked for (calibration).
    features: dict[str, float] | None = None

    def __reduce__(self) -> tuple[type[LeadTrace], tuple[Any, ...]]:
        # Traces cross process boundaries by the hundred thousand: as a plain tuple of the
        # fields they pickle in about half the time and space of the default for slots.
        return (LeadTrace, tuple(getattr(self, name) for name in self.__slots__))

    def crossed_at(self, threshold: float) -> float | None:
        """When the score first reached ``threshold`` before the opportunity, if it did."""
        for score, ts in self.ladder:
            if score >= threshold:
                return ts
        return None


class TracingScorer(Scorer):
    """A :class:`Scorer` that remembers the last measure it took (one per process or thread).

    The engine measures the lead at every checkpoint while applying an event; keeping that
    measure costs nothing, measuring again would cost as much as the checkpoint itself.
    """

    def __init__(self, ruleset: Ruleset) -> None:
        super().__init__(ruleset)
        self.last_measure: _Measure | None = None
        self.stage_names = [stage.name for stage in self.stages]
        self._criteria_fields = _fields_read(
            [c.when for spec in ruleset.components.values() for c in spec.criteria]
        )
        self._criteria_memo: dict[tuple[Any, ...], list[float]] = {}

    def _criteria_points(self, state: LeadState) -> list[float]:
        """The engine's criteria points, memoised on the attributes the criteria read.

        Criteria see the lead's attributes alone, and many leads share the values that matter
        (role, industry, size...), while the role patterns are the dearest conditions of the
        bundled rulesets: a backtest evaluates them once per distinct profile, not per lead.
        """
        if state._crit is not None or self._criteria_fields is None:
            return super()._criteria_points(state)
        key = _memo_key(state.attributes, self._criteria_fields)
        if key is None:
            return super()._criteria_points(state)
        points = self._criteria_memo.get(key)
        if points is None:
            if len(self._criteria_memo) >= _MEMO_LIMIT:
                self._criteria_memo.clear()
            points = super()._criteria_points(state)
            self._criteria_memo[key] = points
        state._crit = points
        return points

    def _measure(self, state: LeadState, now: float) -> _Measure:
        measure = super()._measure(state, now)
        self.last_measure = measure
        return measure

    def rule_ids(self) -> list[str]:
        """Every criterion and action id, in file order (the calibration's features)."""
        ids: list[str] = []
        for component in self.components:
            ids.extend(c.id for c in component.criteria)
            ids.extend(a.id for a in component.actions)
        return ids

    def rule_components(self) -> dict[str, str]:
        """The component each rule id belongs to."""
        owners: dict[str, str] = {}
        for component in self.components:
            owners.update({c.id: component.name for c in component.criteria})
            owners.update({a.id: component.name for a in component.actions})
        return owners

    def rule_points(self) -> dict[str, float]:
        """The points each rule gives now (per event for actions)."""
        points: dict[str, float] = {}
        for component in self.components:
            points.update({c.id: c.points for c in component.criteria})
            points.update({a.id: a.points for a in component.actions})
        return points

    def features(self, state: LeadState, now: float) -> dict[str, float]:
        """Each rule's units at ``now``: what a logistic model of outcomes is fitted on."""
        ctx = Context(state.attributes)
        out: dict[str, float] = {}
        for component in self.components:
            for criterion in component.criteria:
                out[criterion.id] = 1.0 if criterion.when.test(ctx) else 0.0
            for action in component.actions:
                slot = state.actions[action.index]
                if component.half_life is not None:
                    points = (
                        slot[0] * math.exp(-(now - slot[1]) * _LN2 / component.half_life)
                        if slot[2]
                        else 0.0
                    )
                elif component.expire_after is not None:
                    cutoff = now - component.expire_after
                    points = sum(
                        p for ts, p in state.live.get(action.index, ()) if cutoff < ts <= now
                    )
                else:
                    points = slot[0]
                out[action.id] = points / action.points if action.points else 0.0
        return out

    def final(self, state: LeadState, now: float) -> tuple[_Measure, str]:
        """Score, letter, tier and stage at ``now`` without the rest of :meth:`evaluate`.

        A backtest evaluates every lead once per ruleset; deadlines, next actions and the
        explanation are not reported, and skipping them makes this about 5× cheaper.
        """
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
        return measure, stage


_MEMO_LIMIT = 100_000


def _fields_read(conditions: Sequence[Any]) -> tuple[str, ...] | None:
    """The attributes a set of conditions reads, or None if they read anything else."""
    fields: set[str] = set()

    def walk(node: Any) -> bool:
        if isinstance(node, FieldCondition):
            fields.add(node.field)
            return True
        if isinstance(node, AllCondition):
            return all(walk(child) for child in node.all)
        if isinstance(node, AnyCondition):
            return all(walk(child) for child in node.any)
        if isinstance(node, NotCondition):
            return walk(node.not_)
        if isinstance(node, AtLeastCondition):
            return all(walk(child) for child in node.of)
        return False

    if not all(walk(condition) for condition in conditions):
        return None
    return tuple(sorted(fields))


def _hashable(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_hashable(item) for item in value)
    if isinstance(value, dict):
        raise TypeError("not memoised")
    # The type is part of the key: 1, 1.0 and True are equal in Python, not to every operator.
    return (type(value).__name__, value)


def _memo_key(attributes: Mapping[str, Any], fields: tuple[str, ...]) -> tuple[Any, ...] | None:
    try:
        return tuple(_hashable(attributes.get(name)) for name in fields)
    except TypeError:
        return None


def trace_lead(
    scorer: TracingScorer,
    lead_id: str,
    events: Sequence[ScoringEvent],
    as_of: datetime,
    *,
    with_features: bool = False,
) -> LeadTrace | None:
    """Replay ``events`` (one lead's, any order) up to ``as_of``; None if none is that early."""
    limit = as_of.timestamp()
    keyed: dict[str, tuple[float, ScoringEvent]] = {}
    for event in events:
        ts = event.occurred_at.timestamp()
        if ts <= limit and event.id not in keyed:
            keyed[event.id] = (ts, event)
    if not keyed:
        return None
    ordered = sorted(keyed.values(), key=lambda pair: (pair[0], pair[1].id))
    state = scorer.new_state()
    ladder: list[tuple[int, float]] = []
    peak = -1
    opportunity_ts: float | None = None
    features: dict[str, float] | None = None
    decision_stages: list[str] | None = None
    won = lost = False
    for ts, event in ordered:
        kind = event.type
        if opportunity_ts is None and kind in OPPORTUNITY_TYPES:
            opportunity_ts = ts
            decision_stages = list(state.stages)
            if with_features:
                features = scorer.features(state, ts)
        if kind == WON_TYPE:
            won = True
        elif kind == LOST_TYPE:
            lost = True
        scorer.last_measure = None
        scorer.apply(state, event)
        measure = scorer.last_measure
        if opportunity_ts is None and measure is not None and state.checked_ts == ts:
            score = measure.score
            if score > peak:
                peak = score
                ladder.append((score, ts))
    measure, stage = scorer.final(state, limit)
    if opportunity_ts is None:
        decision_stages = list(state.stages)
        # Points may still fade or expire after the last event; the peak already saw them.
        if with_features:
            features = scorer.features(state, limit)
    decision_stage = "lead"
    for name in scorer.stage_names:
        if decision_stages is not None and name in decision_stages:
            decision_stage = name
    return LeadTrace(
        lead_id=lead_id,
        first_ts=ordered[0][0],
        opportunity_ts=opportunity_ts,
        won=won,
        lost=lost,
        score=measure.score,
        letter=measure.letter,
        tier=measure.tier,
        stage=stage,
        decision_score=max(peak, 0),
        ladder=ladder,
        stages_ts={name: float(info["at"]) for name, info in state.stages.items()},
        decision_stage=decision_stage,
        features=features,
    )
