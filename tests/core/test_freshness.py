"""``Scorer.next_change``: time alone never changes a lead before the moment it names.

The freshness sweep re-scores a lead only when its ``next_change_at`` is due, so a moment that
came too late would leave a stale score in the CRM's lists. These tests look for a visible
change strictly before that moment, on states made by random events under a ruleset with every
way time can move a lead: fading points, expiring points and counting windows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from leadscore_api.scoring import LeadState, ScoreResult, ScoringEvent, load_ruleset_text

RULES = """
ruleset: timely
version: 1
components:
  fit:
    max: 40
    criteria:
      - {id: big, points: 40, when: {field: employees, gt: 50}}
  fading:
    max: 60
    decay: {half_life: 2d}
    actions:
      - {id: demo, on: demo.requested, points: 40}
      - {id: visit, on: page.viewed, points: 7}
      - {id: bounce, on: email.bounced, points: -15}
  short_lived:
    max: 20
    decay: {expire_after: 3d}
    actions:
      - {id: webinar, on: webinar.attended, points: 20}
tiers: {hot: 75, warm: 40, cold: 0}
stages:
  engaged:
    demote: true
    when: {event: page.viewed, count: {gte: 2}, within: 5d}
  mql: {score: {gte: 50}}
"""
SCORER = load_ruleset_text(RULES, "timely.yaml").scorer
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
TYPES = ["demo.requested", "page.viewed", "email.bounced", "webinar.attended"]


def visible(result: ScoreResult) -> dict[str, Any]:
    return {
        "letter": result.letter,
        "score": result.score,
        "tier": result.tier,
        "stage": result.stage,
        "next_action": result.next_action,
    }


def state_of(events: list[tuple[str, float]], big: bool) -> tuple[LeadState, datetime]:
    state = SCORER.new_state()
    moment = START
    for index, (kind, hours) in enumerate(events):
        moment += timedelta(hours=hours)
        attributes = {"employees": 200 if big else 5} if index == 0 else {}
        SCORER.apply(state, ScoringEvent(f"e{index}", kind, moment, {}, attributes))
    return state, moment


@settings(max_examples=150, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.sampled_from(TYPES), st.floats(min_value=0.01, max_value=60.0)),
        min_size=1,
        max_size=8,
    ),
    big=st.booleans(),
    wait_hours=st.floats(min_value=0.0, max_value=240.0),
    probes=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=12),
)
def test_nothing_visible_changes_before_next_change(
    events: list[tuple[str, float]], big: bool, wait_hours: float, probes: list[float]
) -> None:
    state, last = state_of(events, big)
    as_of = last + timedelta(hours=wait_hours)
    now_view = visible(SCORER.evaluate(state, as_of))
    upcoming = SCORER.next_change(state, as_of)
    evaluated = SCORER.evaluate(state, as_of)
    assert SCORER.next_change(state, as_of, evaluated.score_exact) == upcoming
    horizon = upcoming if upcoming is not None else as_of + timedelta(days=60)
    assert horizon > as_of
    # The answer is never less than a second away (no busy loop): probe after that second. When
    # the change is due within it, the answer is that second and there is nothing to probe
    # before it (probing at the answer itself would see the change, as it should).
    if horizon - as_of <= timedelta(seconds=1):
        assert horizon == as_of + timedelta(seconds=1)
        return
    for fraction in probes:
        probe = (
            as_of
            + timedelta(seconds=1)
            + (horizon - as_of - timedelta(seconds=1)) * fraction * 0.999
        )
        assert visible(SCORER.evaluate(state, probe)) == now_view, (probe, horizon)


def test_a_lead_nothing_fades_for_has_no_next_change() -> None:
    plain = load_ruleset_text(
        """
ruleset: plain
version: 1
components:
  fit:
    max: 100
    criteria: [{id: big, points: 60, when: {field: employees, gt: 50}}]
    actions: [{id: visit, on: page.viewed, points: 5}]
tiers: {hot: 75, warm: 40, cold: 0}
""",
        "plain.yaml",
    ).scorer
    state = plain.new_state()
    plain.apply(state, ScoringEvent("e1", "page.viewed", START, {}, {"employees": 80}))
    assert plain.next_change(state, START + timedelta(hours=1)) is None


def test_expiring_points_and_windows_give_their_exact_moment() -> None:
    state, last = state_of([("webinar.attended", 1.0)], big=True)
    assert SCORER.next_change(state, last) == last + timedelta(days=3)
    state, last = state_of([("page.viewed", 1.0), ("page.viewed", 1.0)], big=True)
    upcoming = SCORER.next_change(state, last)
    assert upcoming is not None and upcoming <= START + timedelta(hours=1, days=5)


def test_fading_points_are_looked_at_again_before_the_score_moves() -> None:
    state, last = state_of([("demo.requested", 1.0)], big=True)
    before = SCORER.evaluate(state, last)
    upcoming = SCORER.next_change(state, last)
    assert upcoming is not None
    assert SCORER.evaluate(state, upcoming - timedelta(seconds=1)).score == before.score
    # Within a day the bound is looked at again, and the score has moved by then.
    assert upcoming - last <= timedelta(days=1)
    later = SCORER.evaluate(state, last + timedelta(days=1)).score
    assert later < before.score
