"""An explanation rendered from its inputs, read back from JSON, is the result's explanation,
key for key and in the same order: what lets a history row store the inputs only."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from leadscore_api.scoring import ScoringEvent, load_rules_dir

from .golden import RULES_DIR, make_leads

RULES = load_rules_dir(RULES_DIR)
LEADS = make_leads()[:120]


def _text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


@pytest.mark.parametrize("name", sorted(RULES))
def test_the_inputs_render_the_same_explanation_after_json(name: str) -> None:
    scorer = RULES[name].scorer
    for events in LEADS:
        ordered = sorted(events, key=lambda e: (e.occurred_at, e.id))
        state = scorer.new_state()
        results = []
        for event in ordered:
            scorer.apply(state, event)
            results.append(scorer.evaluate(state, event.occurred_at))
        results.append(scorer.evaluate(state, ordered[-1].occurred_at + timedelta(days=45)))
        # Read after later events changed the state: the inputs are those of their moment.
        for result in results[-4:]:
            stored = json.loads(_text(result.explanation_inputs))
            assert stored["inputs"] == 1
            assert _text(scorer.render_explanation(stored)) == _text(result.explanation)
            # Much smaller than what it renders: that is the point of storing it.
            assert len(_text(stored)) < len(_text(result.explanation))


def test_attribute_values_json_would_change_are_kept_as_text() -> None:
    """-0.0 and 1e16 come back from PostgreSQL's jsonb as 0.0 and an integer; the texts show
    them as the engine saw them, so the inputs keep them as JSON text."""
    scorer = RULES["bant"].scorer
    start = make_leads()[0][0].occurred_at
    event = ScoringEvent(
        "e1", "form.submitted", start, {}, {"budget_eur": 1e16, "employees": -0.0, "role": "CEO"}
    )
    state = scorer.new_state()
    scorer.apply(state, event)
    result = scorer.evaluate(state, start)
    inputs = result.explanation_inputs
    assert inputs["attributes"] is None and "1e+16" in inputs["attributes_text"]
    stored = json.loads(_text(inputs))
    assert _text(scorer.render_explanation(stored)) == _text(result.explanation)
    assert "budget_eur 1e+16" in _text(result.explanation)
