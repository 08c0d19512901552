"""The engine's semantics (design §3): limits, decay, gates, clamping, letters, tiers, stages,
matrix, workflows, SLAs, routing, transitions, out-of-order arrival."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from leadscore_api.scoring import (
    LeadState,
    LoadedRuleset,
    OutOfOrderEvent,
    ScoreResult,
    ScoringEvent,
    transitions_between,
)

from .helpers import T0, attrs, event, ruleset

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)

BASE = """
ruleset: t
version: 3
timezone: Europe/Rome
components:
  fit:
    max: 50
    criteria:
      - {id: big, points: 30, when: {field: employees, gt: 50}}
      - {id: ceo, points: 20, when: {field: role, eq: CEO}}
  behaviour:
    max: 50
    ACTION_EXTRA
    actions:
      - {id: visit, on: page.viewed, points: 5, limit: {count: 1, per: 1d}}
      - {id: once, on: newsletter.subscribed, points: 10, limit: {count: 1}}
      - {id: dl, on: content.downloaded, points: 20}
      - {id: bounce, on: [email.bounced, email.unsubscribed], points: -10}
letter: {from: fit, bands: {A: 45, B: 30, C: 15, D: 0}}
tiers: {hot: 75, warm: 40, cold: 0}
stages:
  mql: {all: [{score: {gte: 50}}, {letter: {in: [A, B]}}]}
  sql: {score: {gte: 90}}
score_bands: [0, 50, 90]
matrix:
  A: [wait, priority_contact, potential_sql]
  B: [nurture, mql, sql]
  C: [no_action, watch, re_evaluate]
  D: [no_action, watch, re_evaluate]
"""


def model(extra: str = "") -> LoadedRuleset:
    return ruleset(BASE.replace("ACTION_EXTRA", extra))


def score(extra: str, events: list[ScoringEvent], at: datetime = T0) -> ScoreResult:
    loaded = ruleset(BASE.replace("ACTION_EXTRA", extra))
    return loaded.scorer.replay(events, at)[1]


def test_limit_keeps_the_first_n_per_calendar_day_in_the_rulesets_zone() -> None:
    # 21:30 and 22:30 UTC on 14 June are 23:30 on the 14th and 00:30 on the 15th in Rome.
    late = T0.replace(hour=21, minute=30) - DAY
    result = score(
        "",
        [
            event("a", "page.viewed", late),
            event("b", "page.viewed", late + HOUR),
            event("c", "page.viewed", late + 2 * HOUR),
        ],
    )
    rules = {r["rule"]: r for r in result.explanation["components"]["behaviour"]["rules"]}
    assert rules["visit"]["events_counted"] == 2
    assert rules["visit"]["events_over_limit"] == 1


def test_a_limit_without_a_window_is_for_life() -> None:
    result = score(
        "", [event(f"n{i}", "newsletter.subscribed", T0 - i * 30 * DAY) for i in range(3)]
    )
    assert result.components["behaviour"] == 10


def test_half_life_decay() -> None:
    result = score("decay: {half_life: 10d}", [event("d", "content.downloaded", T0 - 10 * DAY)])
    assert result.components["behaviour"] == pytest.approx(10)


def test_expire_after_drops_points_at_the_age_given() -> None:
    events = [
        event("d1", "content.downloaded", T0 - 10 * DAY),
        event("d2", "content.downloaded", T0 - 2 * DAY),
    ]
    result = score("decay: {expire_after: 7d}", events)
    assert result.components["behaviour"] == 20


def test_components_clamp_to_zero_and_max_and_score_rounds_half_up() -> None:
    negative = score("", [event(f"b{i}", "email.bounced", T0 - i * HOUR) for i in range(3)])
    assert negative.components["behaviour"] == 0
    capped = score("", [event(f"d{i}", "content.downloaded", T0 - i * HOUR) for i in range(4)])
    assert capped.components["behaviour"] == 50
    # 20 points with a 20-day half-life, 1 day old: 20 · 2^(-1/20) = 19.31 → 19
    rounded = score("decay: {half_life: 20d}", [event("d", "content.downloaded", T0 - DAY)])
    assert rounded.score == 19
    half = score(
        "decay: {half_life: 1d}", [event("d", "content.downloaded", T0 - timedelta(days=5.321928))]
    )
    assert half.score_exact == pytest.approx(0.5, abs=1e-4)


def test_gate_keeps_a_component_at_zero_until_it_holds() -> None:
    extra = "requires: {component: fit, gte: 30}"
    closed = score(extra, [event("d", "content.downloaded", T0 - HOUR)])
    assert closed.components["behaviour"] == 0
    assert closed.explanation["components"]["behaviour"]["gate"]["holds"] is False
    opened = score(extra, [attrs({"employees": 60}), event("d", "content.downloaded", T0 - HOUR)])
    assert opened.components["behaviour"] == 20


def test_letter_tier_and_matrix_follow_fit_and_score() -> None:
    result = score(
        "", [attrs({"employees": 60, "role": "ceo"}), event("d", "content.downloaded", T0 - HOUR)]
    )
    assert (result.letter, result.score, result.tier, result.next_action) == (
        "A",
        70,
        "warm",
        "priority_contact",
    )
    plain = score("", [attrs({"employees": 60})])
    assert (plain.letter, plain.tier, plain.next_action) == ("B", "cold", "nurture")


def test_stages_are_sticky_and_a_demote_stage_can_be_left() -> None:
    events = [
        attrs({"employees": 60, "role": "ceo"}),
        event("d", "content.downloaded", T0 - 2 * HOUR),
        event("u", "email.unsubscribed", T0 - HOUR),
    ]
    sticky = score("", events)
    assert sticky.stage == "mql"  # reached at 70, kept at 60 and below
    text = BASE.replace("ACTION_EXTRA", "").replace(
        "  mql: {all: [{score: {gte: 50}}, {letter: {in: [A, B]}}]}",
        "  mql: {all: [{score: {gte: 50}}, {letter: {in: [A, B]}}]}\n  hot_now: {when: {score: {gte: 65}}, demote: true}",
    )
    loaded = ruleset(text)
    _, result = loaded.scorer.replay(events, T0)
    assert result.stage == "mql" and "hot_now" in result.stages_reached


def test_event_count_conditions_with_window_and_distinct() -> None:
    loaded = ruleset(
        """
        ruleset: c
        version: 1
        components:
          e:
            max: 10
            actions: [{id: o, on: email.opened, points: 1}]
        stages:
          engaged:
            event: email.opened
            distinct: message_id
            count: {gte: 2}
            within: 7d
        """
    )
    same = [event(f"o{i}", "email.opened", T0 - i * HOUR, {"message_id": "m1"}) for i in range(3)]
    assert loaded.scorer.replay(same, T0)[1].stage == "lead"
    old = [
        event("a", "email.opened", T0 - 10 * DAY, {"message_id": "m1"}),
        event("b", "email.opened", T0, {"message_id": "m2"}),
    ]
    assert loaded.scorer.replay(old, T0)[1].stage == "lead"
    fresh = [
        event("a", "email.opened", T0 - 2 * DAY, {"message_id": "m1"}),
        event("b", "email.opened", T0, {"message_id": "m2"}),
    ]
    assert loaded.scorer.replay(fresh, T0)[1].stage == "engaged"


def test_bant_workflow_due_sla_and_routing() -> None:
    from leadscore_api.scoring import load_ruleset_file

    bant = load_ruleset_file("rules/bant.yaml")
    friday_evening = T0 + 4 * DAY + 6 * HOUR  # Friday 18:00 in Rome (16:00 UTC)
    hot = {
        "industry": "IT",
        "employees": 120,
        "country": "IT",
        "role": "CEO",
        "budget_eur": 50000,
        "authority": "decision_maker",
        "need": "CRM",
        "timeline_days": 30,
        "source": "referral",
        "region": "Veneto",
    }
    events = [
        event(
            "a",
            "lead.attributes_updated",
            friday_evening - HOUR,
            attributes={**hot, "purchase_intent": True},
        ),
        event("d", "demo.requested", friday_evening),
    ]
    _, result = bant.scorer.replay(events, friday_evening)
    assert (result.tier, result.stage, result.next_action, result.owner) == (
        "hot",
        "mql",
        "call",
        "north-team",
    )
    assert result.next_action_due == friday_evening - HOUR + timedelta(hours=24)
    handover = next(s for s in result.sla if s["id"] == "handover_confirmed")
    # 4 working hours from Friday 18:00: Monday 09:00–13:00 Rome = 11:00 UTC
    assert handover["due"] == "2026-06-22T11:00:00Z"
    assert handover["breached"] is False
    _, later = bant.scorer.replay(events, friday_evening + 3 * DAY)
    assert next(s for s in later.sla if s["id"] == "handover_confirmed")["breached"] is True
    accepted = [*events, event("ok", "lead.accepted", friday_evening + 2 * DAY + 17 * HOUR)]
    _, met = bant.scorer.replay(accepted, friday_evening + 3 * DAY)
    assert met.stage == "sql"
    assert next(s for s in met.sla if s["id"] == "handover_confirmed")["breached"] is False


def test_cold_leads_are_due_for_requalification_after_30_days() -> None:
    from leadscore_api.scoring import load_ruleset_file

    bant = load_ruleset_file("rules/bant.yaml")
    _, result = bant.scorer.replay(
        [event("a", "lead.attributes_updated", T0, attributes={"source": "other"})], T0
    )
    assert result.tier == "cold"
    assert result.requalify_due == T0 + 30 * DAY


def test_decay_moves_a_lead_down_a_tier_between_events_and_the_workflow_clock_starts_then() -> None:
    text = BASE.replace("ACTION_EXTRA", "decay: {half_life: 1d}") + (
        "workflows:\n  warm: {action: email, due: 48h}\n  cold: {action: newsletter, due: 1h}\n"
        "next_action_from: workflow\n"
    )
    scorer = ruleset(text).scorer
    events = [
        attrs({"employees": 60}),
        event("d", "content.downloaded", T0),
        event("v", "page.viewed", T0),
    ]
    state, now = scorer.replay(events, T0)
    assert (now.tier, now.next_action, now.next_action_due) == ("warm", "email", T0 + 48 * HOUR)
    later = scorer.evaluate(state, T0 + 3 * DAY)
    assert (later.tier, later.next_action) == ("cold", "newsletter")
    # 30 + 25 · 2^(-t / 1 d) falls under 39.5 (rounds to 39, cold) at t = log2(25 / 9.5) d ≈ 1.3959 d
    crossing = T0 + timedelta(days=1.3959)
    assert later.next_action_due is not None
    assert abs(later.next_action_due - (crossing + HOUR)) < timedelta(minutes=1)


def test_out_of_order_events_are_refused_by_apply_and_replay_agrees() -> None:
    loaded = model()
    scorer = loaded.scorer
    state = scorer.new_state()
    scorer.apply(state, event("b", "content.downloaded", T0))
    with pytest.raises(OutOfOrderEvent):
        scorer.apply(state, event("a", "page.viewed", T0 - HOUR))
    with pytest.raises(OutOfOrderEvent):
        scorer.apply(state, event("b", "content.downloaded", T0))


def test_state_survives_json() -> None:
    import json

    loaded = model("decay: {half_life: 5d}")
    scorer = loaded.scorer
    events = [
        attrs({"employees": 60}),
        event("d", "content.downloaded", T0 - DAY),
        event("v", "page.viewed", T0 - HOUR),
    ]
    state, _ = scorer.replay(events, T0)
    copy = LeadState.from_json(json.loads(json.dumps(state.to_json())))
    scorer.apply(copy, event("z", "page.viewed", T0 + DAY))
    scorer.apply(state, event("z", "page.viewed", T0 + DAY))
    assert scorer.evaluate(copy, T0 + DAY).to_dict() == scorer.evaluate(state, T0 + DAY).to_dict()


def test_transitions_between_summaries() -> None:
    loaded = model()
    scorer = loaded.scorer
    _, before = scorer.replay([attrs({"employees": 60})], T0)
    _, after = scorer.replay(
        [
            attrs({"employees": 60, "role": "CEO"}),
            event("d", "content.downloaded", T0 - HOUR),
            event("e", "content.downloaded", T0),
        ],
        T0,
    )
    kinds = {
        (t.type, t.from_value, t.to_value)
        for t in transitions_between(before.summary(), after, "e", T0)
    }
    assert kinds == {
        ("lead.stage_changed", "lead", "sql"),
        ("lead.mql", "lead", "mql"),
        ("lead.sql", "lead", "sql"),
        ("lead.tier_changed", "cold", "hot"),
        ("lead.letter_changed", "B", "A"),
    }
    assert transitions_between(after.summary(), after, None, T0) == []
    first = transitions_between(None, before, "x", T0)
    assert first == []  # a new cold lead: no stage reached, first tier/letter are not changes


def test_resume_from_a_snapshot_skips_what_it_has_and_what_comes_after_as_of() -> None:
    """A late event scored from a stored snapshot: the events the snapshot folded, a
    duplicate delivery and an event after ``as_of`` change nothing; the stored JSON itself is
    left as it was."""
    import json

    scorer = model("decay: {half_life: 5d}").scorer
    early = [attrs({"employees": 60}), event("d", "content.downloaded", T0 - 3 * DAY)]
    snapshot_state, _ = scorer.replay(early, T0 - 2 * DAY)
    snapshot = json.loads(json.dumps(snapshot_state.to_json()))
    kept = json.dumps(snapshot)
    late = event("v", "page.viewed", T0 - DAY)
    future = event("f", "content.downloaded", T0 + DAY)
    state, result = scorer.resume(snapshot, [*early, late, late, future], T0)
    full_state, expected = scorer.replay([*early, late, future], T0)
    assert result.to_dict() == expected.to_dict()
    assert state.n_events == full_state.n_events == 3
    assert json.dumps(snapshot) == kept


def test_an_explanation_read_after_later_events_explains_its_own_moment() -> None:
    """The service evaluates after each event of a batch and reads the explanations at the
    end: each one still says what the lead was at its own event."""
    scorer = model().scorer
    state = scorer.new_state()
    scorer.apply(state, attrs({"employees": 60}))
    scorer.apply(state, event("d", "content.downloaded", T0 - HOUR))
    first = scorer.evaluate(state, T0 - HOUR)
    scorer.apply(state, event("e", "content.downloaded", T0))
    second = scorer.evaluate(state, T0)
    _, replayed_first = scorer.replay(
        [attrs({"employees": 60}), event("d", "content.downloaded", T0 - HOUR)], T0 - HOUR
    )
    assert first.explanation == replayed_first.explanation
    assert first.explanation != second.explanation
