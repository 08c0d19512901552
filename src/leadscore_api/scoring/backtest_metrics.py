"""Outcome metrics of a backtest, computed from lead traces: pure functions, no I/O.

Definitions (the report and ``docs/backtest.md`` use the same words):

* A lead *became an opportunity* when the CRM sent ``opportunity.created`` or ``deal.won`` for
  it by the end of the period.
* A lead's *decision score* is the highest score it reached before that (or by the end of the
  period without one): what sales could have acted on. Bands, AUC and the sweep use it, so a
  ruleset that gives points for the outcome events themselves gains nothing from them.
* The *threshold sweep* at T counts the leads whose decision score reached T (they would have
  been SQL with the SQL line at T), the share of them that became opportunities, and the
  median days from crossing T to the opportunity (the sales cycle the seed's MetalPro case
  measures: SQL at 60 → 80 took conversion from 10 % to 17 % and the cycle from 30 to 18 days).
* AUC is the probability that a random lead which became an opportunity has a higher decision
  score than a random one which did not (ties count one half): the Mann–Whitney statistic.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from leadscore_api.scoring.backtest_trace import LeadTrace

DAY = 86400.0
#: SQL lines of the threshold sweep: 50, 55, ..., 95.
SWEEP_THRESHOLDS: tuple[int, ...] = tuple(range(50, 100, 5))
#: Score bands of the conversion table: 0–9, 10–19, ..., 90–100.
BAND_WIDTH = 10


def auc(scores: Sequence[float], positives: Sequence[bool]) -> float | None:
    """Area under the ROC curve by the rank-sum formula, ties given their average rank.

    None when there is no positive or no negative (the AUC is then undefined).
    """
    if len(scores) != len(positives):
        raise ValueError("scores and labels differ in length")
    n_pos = sum(1 for p in positives if p)
    n_neg = len(positives) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = sorted(range(len(scores)), key=scores.__getitem__)
    rank_sum = 0.0
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        average_rank = (i + j) / 2.0 + 1.0
        rank_sum += average_rank * sum(1 for k in range(i, j + 1) if positives[order[k]])
        i = j + 1
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def median(values: Iterable[float]) -> float | None:
    items = list(values)
    return statistics.median(items) if items else None


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def band_of(score: int) -> str:
    low = min(score // BAND_WIDTH * BAND_WIDTH, 100 - BAND_WIDTH)
    high = 100 if low == 100 - BAND_WIDTH else low + BAND_WIDTH - 1
    return f"{low}-{high}"


def counts(traces: Sequence[LeadTrace]) -> dict[str, dict[str, int]]:
    """Leads by letter, tier and stage at the end of the period."""

    def tally(values: Iterable[str | None]) -> dict[str, int]:
        counter = Counter("none" if v is None else v for v in values)
        return dict(sorted(counter.items()))

    return {
        "letter": tally(t.letter for t in traces),
        "tier": tally(t.tier for t in traces),
        "stage": tally(t.stage for t in traces),
    }


def conversion_by_band(traces: Sequence[LeadTrace]) -> list[dict[str, Any]]:
    leads: Counter[str] = Counter()
    converted: Counter[str] = Counter()
    for trace in traces:
        band = band_of(trace.decision_score)
        leads[band] += 1
        if trace.opportunity_ts is not None:
            converted[band] += 1
    rows = []
    for low in range(0, 100, BAND_WIDTH):
        band = band_of(low)
        rows.append(
            {
                "band": band,
                "leads": leads[band],
                "opportunities": converted[band],
                "conversion": _round(_rate(converted[band], leads[band])),
            }
        )
    return rows


def conversion_by_stage(traces: Sequence[LeadTrace], stages: Sequence[str]) -> list[dict[str, Any]]:
    """Conversion of the leads by the highest stage they reached before the opportunity."""
    leads: Counter[str] = Counter()
    converted: Counter[str] = Counter()
    for trace in traces:
        leads[trace.decision_stage] += 1
        if trace.opportunity_ts is not None:
            converted[trace.decision_stage] += 1
    return [
        {
            "stage": stage,
            "leads": leads[stage],
            "opportunities": converted[stage],
            "conversion": _round(_rate(converted[stage], leads[stage])),
        }
        for stage in ["lead", *stages]
    ]


def threshold_sweep(
    traces: Sequence[LeadTrace], thresholds: Sequence[int] = SWEEP_THRESHOLDS
) -> list[dict[str, Any]]:
    """The MetalPro table: with the SQL line at T, how many SQLs, how many became opportunities."""
    # One walk up each lead's ladder of peaks serves every line (both are ascending).
    lines = sorted(thresholds)
    if not lines:
        return []
    sql = dict.fromkeys(lines, 0)
    opportunities = dict.fromkeys(lines, 0)
    days: dict[int, list[float]] = {line: [] for line in lines}
    for trace in traces:
        ladder = trace.ladder
        if not ladder or ladder[-1][0] < lines[0]:
            continue
        step = 0
        for line in lines:
            while step < len(ladder) and ladder[step][0] < line:
                step += 1
            if step == len(ladder):
                break
            sql[line] += 1
            if trace.opportunity_ts is not None:
                opportunities[line] += 1
                days[line].append((trace.opportunity_ts - ladder[step][1]) / DAY)
    return [
        {
            "threshold": line,
            "sql": sql[line],
            "opportunities": opportunities[line],
            "conversion": _round(_rate(opportunities[line], sql[line])),
            "median_days_to_opportunity": _round(median(days[line]), 2),
        }
        for line in thresholds
    ]


def sql_stage(stages: Sequence[str]) -> str | None:
    """The stage that stands for SQL: the one named ``sql``, else the last one."""
    if "sql" in stages:
        return "sql"
    return stages[-1] if stages else None


def summarize(traces: Sequence[LeadTrace], stages: Sequence[str]) -> dict[str, Any]:
    """Everything the report shows for one ruleset."""
    target = sql_stage(stages)
    to_sql = [
        (t.stages_ts[target] - t.first_ts) / DAY
        for t in traces
        if target is not None and target in t.stages_ts
    ]
    to_opportunity = [
        (t.opportunity_ts - t.first_ts) / DAY for t in traces if t.opportunity_ts is not None
    ]
    sql_to_opportunity = [
        (t.opportunity_ts - t.stages_ts[target]) / DAY
        for t in traces
        if target is not None
        and t.opportunity_ts is not None
        and target in t.stages_ts
        and t.stages_ts[target] <= t.opportunity_ts
    ]
    opportunities = sum(1 for t in traces if t.opportunity_ts is not None)
    area = auc([t.decision_score for t in traces], [t.opportunity_ts is not None for t in traces])
    return {
        "leads": len(traces),
        "opportunities": opportunities,
        "won": sum(1 for t in traces if t.won),
        "conversion": _round(_rate(opportunities, len(traces))),
        "auc": _round(area),
        "sql_stage": target,
        "median_days": {
            "to_sql": _round(median(to_sql), 2),
            "to_opportunity": _round(median(to_opportunity), 2),
            "sql_to_opportunity": _round(median(sql_to_opportunity), 2),
        },
        "counts": counts(traces),
        "conversion_by_band": conversion_by_band(traces),
        "conversion_by_stage": conversion_by_stage(traces, stages),
        "threshold_sweep": threshold_sweep(traces),
    }


def stage_changes(
    active: Sequence[LeadTrace], candidate: Sequence[LeadTrace], limit: int
) -> dict[str, Any]:
    """Leads whose stage at the end differs between the two rulesets (count, first ``limit``)."""
    by_id = {t.lead_id: t for t in active}
    items: list[dict[str, Any]] = []
    count = 0
    moves: Counter[tuple[str, str]] = Counter()
    for trace in sorted(candidate, key=lambda t: t.lead_id):
        before = by_id.get(trace.lead_id)
        if before is None or before.stage == trace.stage:
            continue
        count += 1
        moves[(before.stage, trace.stage)] += 1
        if len(items) < limit:
            items.append(
                {
                    "lead_id": trace.lead_id,
                    "active": {"stage": before.stage, "score": before.score},
                    "candidate": {"stage": trace.stage, "score": trace.score},
                }
            )
    return {
        "count": count,
        "by_move": [{"from": a, "to": b, "leads": n} for (a, b), n in sorted(moves.items())],
        "items": items,
        "limit": limit,
    }
