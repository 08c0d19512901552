"""Calibration: suggest points per rule from the outcomes the CRM reported.

The score is a sum of points per rule, so a logistic regression of "became an opportunity" on
each rule's units (a criterion 1 or 0, an action the number of its events still counting, at
the moment before the opportunity) is the same shape as the ruleset: each coefficient is the
log-odds one unit of the rule is worth. Scaling the coefficients by one factor, the one that
best matches today's points, gives points on today's scale, so the score bands and stage
thresholds keep their meaning. The result is a candidate file, a copy of the active one with
only ``points`` and ``version`` changed and the fit written on top as comments, to review,
test, backtest on another period and activate: nothing is changed in the service.

scikit-learn and numpy come with the optional extra ``calibration``
(``pip install 'leadscore[calibration]'``); the base install does not need them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from leadscore_api.scoring import LoadedRuleset, load_ruleset_text
from leadscore_api.scoring.backtest_trace import LeadTrace, TracingScorer, trace_lead
from leadscore_api.scoring.ruleset_edit import with_points
from leadscore_api.service.backtest import Period, run_backtest
from leadscore_api.storage.repositories import backtest as backtest_repo

EXTRA_HINT = "pip install 'leadscore[calibration]'"
#: Inverse strength of the L2 penalty: mild, so that rules seen on few leads are not trusted.
REGULARISATION_C = 1.0


class CalibrationError(Exception):
    """Calibration cannot run: the extra is missing, or the history cannot support a fit."""


def _sklearn() -> tuple[Any, Any]:
    """numpy and scikit-learn's LogisticRegression, or a message naming the extra."""
    try:
        numpy = importlib.import_module("numpy")
        linear_model = importlib.import_module("sklearn.linear_model")
    except ImportError as exc:
        raise CalibrationError(
            f"calibration needs numpy and scikit-learn ({exc.name} is not installed): {EXTRA_HINT}"
        ) from None
    return numpy, linear_model.LogisticRegression


@dataclass
class Calibration:
    text: str
    coefficients: dict[str, float]
    intercept: float
    #: Per component, the factor k that turns coefficients into points.
    scales: dict[str, float]
    current: dict[str, float]
    suggested: dict[str, float]
    #: Rules that never varied in the period: they keep their points.
    unchanged: list[str]
    report: dict[str, Any]
    #: The comment written on top of the file: the fit and the expected change per band.
    header: str = ""


def _traces(session: Session, scorer: TracingScorer, period: Period) -> list[LeadTrace]:
    traces = []
    for lead_id, events in backtest_repo.stream_lead_events(session, period.start, period.end):
        trace = trace_lead(scorer, lead_id, events, period.end, with_features=True)
        if trace is not None:
            traces.append(trace)
    return traces


def _scale(current: dict[str, float], beta: dict[str, float]) -> float:
    """The factor k for which k·β is closest (least squares) to today's points."""
    cross = sum(current[r] * b for r, b in beta.items())
    norm = sum(b * b for b in beta.values())
    if norm > 0 and cross > 0:
        return cross / norm
    total = sum(abs(b) for b in beta.values())
    return sum(abs(current[r]) for r in beta) / total if total else 0.0


def _header(cal: Calibration, active: LoadedRuleset, period: Period, fitted_on: int) -> str:
    report = cal.report
    rows = [
        f"Calibrated by `leadscore rules calibrate` on {datetime.now(UTC):%Y-%m-%d} from"
        f" {active.name} v{active.version}.",
        f"Period: {report['period']['from'] or 'all history'} → {report['period']['to']};"
        f" {fitted_on} leads, {report['active']['opportunities']} became opportunities.",
        "Logistic regression (scikit-learn, L2, C="
        f"{REGULARISATION_C}) of 'became an opportunity' on each rule's units before it",
        "(criterion 1/0; action: events still counting). Suggested points = round(k × coefficient)"
        " with k per component",
        "on today's scale: "
        + ", ".join(f"{name} {k:.3f}" for name, k in cal.scales.items())
        + f"; intercept {cal.intercept:.3f}. Gates, letter bands and stage thresholds are",
        "not changed: check them against the table below, then validate, test and backtest"
        " on another period before activating.",
        "",
        f"{'rule':32s} {'coefficient':>11s} {'points now':>10s} {'suggested':>9s}",
    ]
    for rule, now in cal.current.items():
        coefficient = cal.coefficients.get(rule)
        shown = "no data" if coefficient is None else f"{coefficient:.3f}"
        rows.append(f"{rule:32s} {shown:>11s} {now:>10g} {cal.suggested[rule]:>9g}")
    rows += [
        "",
        "Conversion per score band on the same leads (in-sample, so optimistic):",
        f"{'band':8s} {'now: leads':>10s} {'conv.':>7s} {'this file: leads':>16s} {'conv.':>7s}",
    ]
    for now_row, new_row in zip(
        report["active"]["conversion_by_band"],
        report["candidate"]["conversion_by_band"],
        strict=True,
    ):

        def pct(value: float | None) -> str:
            return "–" if value is None else f"{100 * value:.1f}%"

        rows.append(
            f"{now_row['band']:8s} {now_row['leads']:>10d} {pct(now_row['conversion']):>7s}"
            f" {new_row['leads']:>16d} {pct(new_row['conversion']):>7s}"
        )
    rows.append(
        f"AUC of the score for an opportunity: now {report['active']['auc']},"
        f" this file {report['candidate']['auc']}."
    )
    return "\n".join(rows)


def calibrate(session: Session, active: LoadedRuleset, period: Period) -> Calibration:
    """Fit the model on the period's leads and write the candidate file's text."""
    numpy, logistic_regression = _sklearn()
    scorer = TracingScorer(active.ruleset)
    traces = _traces(session, scorer, period)
    labels = [t.opportunity_ts is not None for t in traces]
    if not traces or all(labels) or not any(labels):
        raise CalibrationError(
            f"the period has {len(traces)} leads, {sum(labels)} of them opportunities: a fit"
            " needs leads that became opportunities and leads that did not"
        )
    rules = scorer.rule_ids()
    current = scorer.rule_points()
    matrix = numpy.array(
        [[(t.features or {}).get(rule, 0.0) for rule in rules] for t in traces], dtype=float
    )
    varied = [j for j, rule in enumerate(rules) if matrix[:, j].std() > 0]
    if not varied:
        raise CalibrationError("no rule fired differently between leads in the period")
    model = logistic_regression(C=REGULARISATION_C, max_iter=5000)
    model.fit(matrix[:, varied], numpy.array(labels, dtype=int))
    beta = {rules[j]: float(c) for j, c in zip(varied, model.coef_[0], strict=True)}
    # One factor per component: a component's points have a meaning of their own (the fit
    # feeds the letter and the behaviour gate), so each keeps its own scale.
    components = scorer.rule_components()
    scales: dict[str, float] = {}
    for name in dict.fromkeys(components.values()):
        mine = {rule: b for rule, b in beta.items() if components[rule] == name}
        if mine:
            scales[name] = _scale(current, mine)
    suggested = dict(current)
    for rule, b in beta.items():
        suggested[rule] = float(max(-100, min(100, round(scales[components[rule]] * b))))
    text = with_points(active.content, suggested, active.version + 1, filename=active.name)
    candidate = load_ruleset_text(text, f"{active.name} (calibrated)")
    report = run_backtest(session, active, candidate, period)
    calibration = Calibration(
        text=text,
        coefficients=beta,
        intercept=float(model.intercept_[0]),
        scales=scales,
        current=current,
        suggested=suggested,
        unchanged=[rule for rule in rules if rule not in beta],
        report=report,
    )
    header = _header(calibration, active, period, len(traces))
    calibration.header = header
    calibration.text = with_points(
        active.content, suggested, active.version + 1, header=header, filename=active.name
    )
    return calibration
