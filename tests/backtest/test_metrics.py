"""The pure backtest metrics against their definitions, on arbitrary inputs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from leadscore_api.scoring.backtest_metrics import auc, band_of, threshold_sweep
from leadscore_api.scoring.backtest_trace import LeadTrace

DAY = 86400.0


def pairwise_auc(scores: list[int], positives: list[bool]) -> float:
    """The definition: over every (opportunity, other) pair, 1 if ranked right, ½ if tied."""
    pos = [s for s, p in zip(scores, positives, strict=True) if p]
    neg = [s for s, p in zip(scores, positives, strict=True) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


@given(st.lists(st.tuples(st.integers(0, 100), st.booleans()), min_size=1, max_size=60))
def test_auc_is_the_share_of_pairs_ranked_right(leads: list[tuple[int, bool]]) -> None:
    scores = [s for s, _ in leads]
    positives = [p for _, p in leads]
    result = auc(scores, positives)
    if all(positives) or not any(positives):
        assert result is None
    else:
        assert result is not None
        assert abs(result - pairwise_auc(scores, positives)) < 1e-9


def test_bands_cover_0_to_100() -> None:
    assert [band_of(s) for s in (0, 9, 10, 89, 90, 99, 100)] == [
        "0-9",
        "0-9",
        "10-19",
        "80-89",
        "90-100",
        "90-100",
        "90-100",
    ]


def _trace(lead: str, ladder: list[tuple[int, float]], opportunity: float | None) -> LeadTrace:
    return LeadTrace(
        lead_id=lead,
        first_ts=0.0,
        opportunity_ts=opportunity,
        won=False,
        lost=False,
        score=ladder[-1][0],
        letter=None,
        tier=None,
        stage="lead",
        decision_score=ladder[-1][0],
        ladder=ladder,
        stages_ts={},
        decision_stage="lead",
    )


def test_sweep_counts_the_first_crossing_of_each_line() -> None:
    traces = [
        # Reaches 55 on day 1 and 85 on day 3; opportunity on day 10.
        _trace("a", [(10, 0.0), (55, 1 * DAY), (85, 3 * DAY)], 10 * DAY),
        # Reaches 60 on day 2; no opportunity.
        _trace("b", [(60, 2 * DAY)], None),
        # Reaches 95 on day 4; opportunity on day 5.
        _trace("c", [(95, 4 * DAY)], 5 * DAY),
    ]
    rows = {r["threshold"]: r for r in threshold_sweep(traces, (50, 60, 85, 95))}
    assert rows[50] == {
        "threshold": 50,
        "sql": 3,
        "opportunities": 2,
        "conversion": 0.6667,
        "median_days_to_opportunity": 5.0,  # a: 10 - 1 = 9, c: 5 - 4 = 1
    }
    assert (rows[60]["sql"], rows[60]["median_days_to_opportunity"]) == (3, 4.0)  # a: 7, c: 1
    assert (rows[85]["sql"], rows[85]["conversion"]) == (2, 1.0)
    assert (rows[95]["sql"], rows[95]["median_days_to_opportunity"]) == (1, 1.0)
