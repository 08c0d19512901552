"""The engine gives, for 300 generated leads under both bundled rulesets, exactly what it
gave before it was made faster: results, explanations, summaries after each event, later
moments, next changes and stored states (see ``golden.py``).

The pinned states are in the first layout ("v": 1), which kept every counted moment; today's
keep a number or the distinct values for counts without a window, and must otherwise be the
same. The service has such states in its database: read back, they give the same results."""

from __future__ import annotations

import gzip
import json
from datetime import timedelta
from typing import Any

import pytest

from leadscore_api.scoring import LeadState, Scorer, load_rules_dir

from .golden import FIXTURE, RULES_DIR, dump, make_leads, outcome

RULES = load_rules_dir(RULES_DIR)
EXPECTED: dict[str, list[dict[str, Any]]] = json.loads(gzip.decompress(FIXTURE.read_bytes()))
LEADS = make_leads()


def as_layout_2(scorer: Scorer, state: dict[str, Any]) -> dict[str, Any]:
    """A layout-1 state as today's engine lays it out (what each unwindowed count keeps)."""
    counts: list[Any] = []
    for spec, entries in zip(scorer.counts, state["counts"], strict=True):
        if spec.within is not None:
            counts.append(entries)
        elif spec.distinct is not None:
            seen: dict[str, float] = {}
            for ts, value in entries:
                seen.setdefault(value, ts)
            counts.append(seen)
        else:
            counts.append(len(entries))
    return {**state, "v": 2, "counts": counts}


@pytest.mark.parametrize("name", sorted(RULES))
def test_results_explanations_and_states_are_unchanged(name: str) -> None:
    assert len(EXPECTED[name]) == len(LEADS)
    scorer = RULES[name].scorer
    for number, (events, expected) in enumerate(zip(LEADS, EXPECTED[name], strict=True)):
        got = outcome(scorer, events)
        assert set(got) == set(expected)
        for key in expected:
            if key == "state":
                assert json.loads(got[key]) == as_layout_2(scorer, json.loads(expected[key]))
            else:
                assert got[key] == expected[key], f"lead {number}: {key} differs"


@pytest.mark.parametrize("name", sorted(RULES))
def test_states_stored_in_layout_1_give_the_same_results(name: str) -> None:
    """A state the service stored before counts were bounded: evaluated, and folded with
    later events (which change its counters' layout), it scores as the whole history does."""
    scorer = RULES[name].scorer
    for events, expected in zip(LEADS, EXPECTED[name], strict=True):
        stored = json.loads(expected["state"])
        assert stored["v"] == 1
        ordered = sorted(events, key=lambda e: (e.occurred_at, e.id))
        as_of = ordered[-1].occurred_at + timedelta(hours=1)
        state = LeadState.from_json(stored)
        assert dump(scorer.evaluate(state, as_of).to_dict()) == expected["result"]
        # The same events once more, a day later and in order: layout 1 meets new events.
        later = [
            type(e)(
                f"{e.id}b",
                e.type,
                e.occurred_at
                + (ordered[-1].occurred_at - ordered[0].occurred_at)
                + timedelta(days=1),
                e.properties,
                e.attributes,
            )
            for e in ordered
        ]
        for event in later:
            scorer.apply(state, event)
        end = later[-1].occurred_at + timedelta(hours=1)
        _, replayed = scorer.replay(ordered + later, end)
        assert scorer.evaluate(state, end).to_dict() == replayed.to_dict()
        assert json.loads(json.dumps(state.to_json()))["v"] == 2
