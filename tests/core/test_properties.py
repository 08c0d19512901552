"""Properties of the core over generated event histories (hypothesis), on the bundled rulesets:
the score stays in 0–100, incremental and from-scratch scoring agree, arrival order does not
matter, and decay never raises a score as time passes."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leadscore_api.scoring import (
    LeadState,
    OutOfOrderEvent,
    Scorer,
    ScoreResult,
    ScoringEvent,
    load_rules_dir,
)

from .helpers import T0

RULES = load_rules_dir(Path(__file__).resolve().parents[2] / "rules")
SCORERS = [RULES[name].scorer for name in sorted(RULES)]

TYPES = [
    "page.viewed",
    "email.opened",
    "email.clicked",
    "content.downloaded",
    "newsletter.subscribed",
    "webinar.attended",
    "email.bounced",
    "email.unsubscribed",
    "email.spam_reported",
    "demo.requested",
    "contact.requested",
    "lead.accepted",
    "form.submitted",
    "deal.won",
    "custom.thing",
]

attributes = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["CEO", "Responsabile acquisti", "HR", "impiegato"]),
        "industry": st.sampled_from(["IT", "manifatturiero", "retail"]),
        "employees": st.sampled_from([3, 50, 51, 300, 1200]),
        "annual_revenue_eur": st.sampled_from([100_000, 1_000_000, 5_000_000]),
        "segment": st.sampled_from(["b2b", "b2c"]),
        "age": st.integers(18, 80),
        "budget_eur": st.sampled_from([0, 5000, 20000]),
        "authority": st.sampled_from(["decision_maker", "influencer", "user"]),
        "source": st.sampled_from(["referral", "organic", "purchased_list"]),
        "purchase_intent": st.booleans(),
    },
)

#: A generated event: type, minutes before T0, page URL, message id, attributes.
RawEvent = tuple[str, int, str, str, dict[str, object]]


def raw_event(
    kind: str, minutes: int, url: str, message: str, attrs: dict[str, object]
) -> RawEvent:
    return (kind, minutes, url, message, attrs)


event_strategy = st.builds(
    raw_event,
    st.sampled_from(TYPES),
    st.integers(0, 60 * 24 * 60),  # within 60 days
    st.sampled_from(["/pricing", "/prezzi", "/blog", "/prodotti/erp"]),
    st.sampled_from(["m1", "m2", "m3", "m4"]),
    st.one_of(st.just({}), attributes),
)


def build(raw: list[RawEvent]) -> list[ScoringEvent]:
    return [
        ScoringEvent(
            f"e{i}",
            kind,
            T0 - timedelta(minutes=minutes),
            {"url": url, "message_id": message, "asked_questions": minutes % 2 == 0},
            attrs,
        )
        for i, (kind, minutes, url, message, attrs) in enumerate(raw)
    ]


def as_service_would(scorer: Scorer, events: list[ScoringEvent]) -> ScoreResult:
    """Events arrive in the given order; the state goes through JSON between events (it is
    stored in SQL), and an out-of-order event makes the service replay what it has."""
    seen: list[ScoringEvent] = []
    stored: dict[str, object] | None = None
    for event in events:
        seen.append(event)
        state = (
            LeadState.from_json(json.loads(json.dumps(stored))) if stored else scorer.new_state()
        )
        try:
            scorer.apply(state, event)
        except OutOfOrderEvent:
            state, _ = scorer.replay(seen, T0)
        stored = state.to_json()
    assert stored is not None
    return scorer.evaluate(LeadState.from_json(stored), T0)


common = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@common
@given(st.lists(event_strategy, min_size=1, max_size=25), st.randoms(use_true_random=False))
def test_arrival_order_and_incremental_path_do_not_change_the_result(
    raw: list[RawEvent], rnd: random.Random
) -> None:
    events = build(raw)
    for scorer in SCORERS:
        _, expected = scorer.replay(events, T0)
        assert 0 <= expected.score <= 100
        in_order = sorted(events, key=lambda e: (e.occurred_at, e.id))
        shuffled = list(events)
        rnd.shuffle(shuffled)
        for arrival in (in_order, shuffled):
            assert as_service_would(scorer, arrival).to_dict() == expected.to_dict()


@common
@given(
    st.lists(event_strategy, min_size=1, max_size=25),
    st.lists(st.integers(1, 400 * 24), min_size=1, max_size=6),
)
def test_decay_never_raises_a_score_over_time(raw: list[RawEvent], hours: list[int]) -> None:
    """Fading points (half-life) never raise a score. Expiring ones can, rightly: a bounce's
    -10 that expires before a download's +10 lifts the score, so those models are left out."""
    events = build(raw)
    fading = [s for s in SCORERS if not any(c.expire_after for c in s.components)]
    assert fading
    for scorer in fading:
        state, _ = scorer.replay(events, T0)
        previous = scorer.evaluate(state, T0)
        for later in sorted(hours):
            current = scorer.evaluate(state, T0 + timedelta(hours=later))
            assert 0 <= current.score <= 100
            assert current.score_exact <= previous.score_exact + 1e-9
            for name, value in current.components.items():
                assert value <= previous.components[name] + 1e-9
            previous = current


@common
@given(
    st.lists(event_strategy, min_size=1, max_size=30),
    st.integers(0, 30),
    st.randoms(use_true_random=False),
)
def test_resuming_from_a_stored_snapshot_equals_a_full_replay(
    raw: list[RawEvent], split: int, rnd: random.Random
) -> None:
    """A state stored after the first k events (in scoring order), read back from JSON, and
    resumed with the later events (any order, earlier ones included) scores as the replay of
    the whole history: score, stages and when they were reached, tier_since (follow-up anchor,
    deadlines), SLAs met, the stored state itself and the next moment time changes the lead."""
    events = build(raw)
    ordered = sorted(events, key=lambda e: (e.occurred_at, e.id))
    k = min(split, len(ordered))
    for scorer in SCORERS:
        full_state, expected = scorer.replay(events, T0)
        head = scorer.new_state()
        for event in ordered[:k]:
            scorer.apply(head, event)
        snapshot = json.loads(json.dumps(head.to_json()))
        shuffled = list(events)
        rnd.shuffle(shuffled)
        state, result = scorer.resume(snapshot, shuffled, T0)
        assert result.to_dict() == expected.to_dict()
        assert result.summary() == expected.summary()
        assert json.dumps(state.to_json()) == json.dumps(full_state.to_json())
        assert scorer.next_change(state, T0) == scorer.next_change(full_state, T0)
        later = T0 + timedelta(days=rnd.randint(1, 200))
        assert (
            scorer.evaluate(state, later).to_dict() == scorer.evaluate(full_state, later).to_dict()
        )
