"""SQL of the reports: every figure is an aggregate computed by the database.

Two queries serve every report, both on ``report_history`` (the history's stages and scores in
plain columns, see ``storage/report_models.py``):

- :func:`cohort_groups` takes the leads that *arrived* in the period (their first history row
  under the model, in event time), works out per lead when it first reached each stage, the
  hand-over, its first contact after the hand-over and its CRM outcomes, and returns them
  **grouped** by source, current letter, current score band and best score band. A year of
  leads comes back as a few hundred rows of counts and sums, from which the service adds up the
  KPIs, the matrix, the funnel, conversion by band and the channels.
- :func:`crossings_by_day` counts the stage crossings (a lead entering a stage above the one it
  was in) per day and stage.

Both work on SQLite and PostgreSQL; the only differences (time differences, the day of a
timestamp) are in :func:`_seconds_between` and :func:`_day_of`. Days are UTC days.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    String,
    and_,
    case,
    cast,
    extract,
    func,
    literal,
    select,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement as _Col

from leadscore_api.storage.models import Lead, LeadScore, Outcome
from leadscore_api.storage.report_models import ReportHistory

#: Outcomes that mean an opportunity exists (a won deal had one, even if the CRM skipped it).
OPPORTUNITY_TYPES = ("opportunity.created", "deal.won")
#: Outcomes that show sales took a handed-over lead up.
TAKEN_UP_TYPES = ("lead.accepted", "lead.contacted", "opportunity.created", "deal.won")
CONTACTED = "lead.contacted"
OUTCOME_TYPES = ("lead.accepted", "lead.contacted", "opportunity.created", "deal.won")
WON = "deal.won"
#: What a lead without a ``source`` attribute is reported under.
UNKNOWN_SOURCE = "unknown"


@dataclass(frozen=True)
class CohortQuery:
    """Which leads and how to read them: plain values, prepared by the service."""

    model: str
    #: True when ``model`` is the primary ruleset, whose summary is on the ``leads`` row.
    primary: bool
    start: datetime
    end: datetime  # exclusive
    #: Stage names of the model in rising order (``["mql", "sql"]``).
    stages: Sequence[str]
    #: Index in ``stages`` of the hand-over stage, or None when the model has none.
    handover: int | None
    #: Lower bounds of the score bands, rising (``[0, 50, 90]``).
    bands: Sequence[float]
    #: Hand-overs after this moment are too recent to count as abandoned.
    abandon_cutoff: datetime
    source: str | None = None
    owner: str | None = None


@dataclass(frozen=True)
class CohortGroup:
    """Counts and sums for the leads of one source × letter × band × best band."""

    source: str
    letter: str | None
    band: int
    best_band: int
    leads: int
    #: Leads that reached each stage (or a later one), in the order of ``CohortQuery.stages``.
    reached: tuple[int, ...]
    handed_over: int
    opportunities: int
    won: int
    revenue: float
    #: Sum of seconds from arrival to the first stage (the MQL), over ``reached[0]`` leads.
    qualify_seconds: float
    #: First contacts after the hand-over, and the sum of their delays in seconds.
    contacted: int
    response_seconds: float
    #: Hand-overs old enough to judge, and those of them sales never took up.
    abandon_eligible: int
    abandoned: int
    #: Sum of the best scores, for the average quality of a channel.
    best_score_sum: float


@dataclass(frozen=True)
class CrossingCount:
    day: str
    stage: str
    count: int


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _seconds_between(dialect: str, start: Any, end: Any) -> ColumnElement[float]:
    if dialect == "postgresql":
        return cast(extract("epoch", end - start), Float)
    return (func.julianday(end) - func.julianday(start)) * 86400.0


def _day_of(dialect: str, moment: Any) -> ColumnElement[str]:
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", moment), "YYYY-MM-DD")
    return cast(func.date(moment), String)


def _band_of(score: ColumnElement[Any], bands: Sequence[float]) -> ColumnElement[int]:
    """The index of the highest band whose lower bound the score reaches (0 below all)."""
    whens = [(score >= low, index) for index, low in reversed(list(enumerate(bands))) if index]
    if not whens:
        return literal(0)
    return case(*whens, else_=0)


def _stage_rank(stage: ColumnElement[Any], stages: Sequence[str]) -> ColumnElement[int]:
    """0 for the base stage (``lead``) and unknown names, then 1, 2... in the model's order."""
    if not stages:
        return literal(0)
    return case({name: rank for rank, name in enumerate(stages, start=1)}, value=stage, else_=0)


def source_expression() -> ColumnElement[str]:
    """The lead's acquisition source: its ``source`` attribute (first touch), else unknown."""
    return func.coalesce(Lead.attributes["source"].as_string(), UNKNOWN_SOURCE)


def cohort_groups(session: Session, query: CohortQuery) -> list[CohortGroup]:
    dialect = _dialect(session)
    rh = ReportHistory.__table__.c
    rank = _stage_rank(rh.stage, query.stages)
    arrived = func.min(case((rh.arrival, rh.changed_at)))
    reached_cols = [
        func.min(case((rank >= position, rh.changed_at))).label(f"reached_{position}")
        for position in range(1, len(query.stages) + 1)
    ]
    per_lead = (
        select(
            rh.lead_id.label("lead_id"),
            arrived.label("arrived_at"),
            func.max(rh.score).label("best_score"),
            *reached_cols,
        )
        .where(rh.ruleset_name == query.model, rh.changed_at >= query.start)
        .group_by(rh.lead_id)
        .cte("per_lead")
    )
    handover_at: ColumnElement[Any] | None = (
        per_lead.c[f"reached_{query.handover + 1}"] if query.handover is not None else None
    )

    oc = Outcome.__table__.c
    after_handover: ColumnElement[bool] = (
        oc.occurred_at >= handover_at if handover_at is not None else literal(False)
    )
    outcomes = (
        select(
            oc.lead_id.label("lead_id"),
            func.max(case((oc.type.in_(OPPORTUNITY_TYPES), 1), else_=0)).label("opportunity"),
            func.max(case((oc.type == WON, 1), else_=0)).label("won"),
            func.sum(case((oc.type == WON, oc.amount), else_=0.0)).label("revenue"),
            func.min(case((and_(oc.type == CONTACTED, after_handover), oc.occurred_at))).label(
                "contacted_at"
            ),
            func.max(case((and_(oc.type.in_(TAKEN_UP_TYPES), after_handover), 1), else_=0)).label(
                "taken_up"
            ),
        )
        .join(per_lead, per_lead.c.lead_id == oc.lead_id)
        # A cohort lead's outcomes come after its arrival: the index on (type, occurred_at)
        # skips the outcomes of the leads of earlier periods.
        .where(oc.type.in_(OUTCOME_TYPES), oc.occurred_at >= query.start)
        .group_by(oc.lead_id)
        .cte("lead_outcomes")
    )

    if query.primary:
        letter: ColumnElement[Any] = Lead.__table__.c.letter
        current_score: ColumnElement[Any] = cast(Lead.score, Float)
    else:
        letter = LeadScore.summary["letter"].as_string()
        current_score = LeadScore.summary["score"].as_float()
    band = _band_of(current_score, query.bands).label("band")
    best_band = _band_of(per_lead.c.best_score, query.bands).label("best_band")
    source = source_expression().label("source")

    qualify = (
        _seconds_between(dialect, per_lead.c.arrived_at, per_lead.c.reached_1)
        if query.stages
        else literal(0.0)
    )
    if handover_at is not None:
        response = _seconds_between(dialect, handover_at, outcomes.c.contacted_at)
        handed: ColumnElement[int] = func.count(handover_at)
        eligible_when = handover_at < query.abandon_cutoff
        eligible: ColumnElement[int] = func.count(case((eligible_when, 1)))
        abandoned: ColumnElement[int] = func.count(
            case((and_(eligible_when, func.coalesce(outcomes.c.taken_up, 0) == 0), 1))
        )
    else:
        response = literal(0.0)
        handed = eligible = abandoned = literal(0)

    columns: list[_Col[Any]] = [
        source,
        letter.label("letter"),
        band,
        best_band,
        func.count().label("leads"),
        *[func.count(per_lead.c[f"reached_{p}"]) for p in range(1, len(query.stages) + 1)],
        handed.label("handed_over"),
        func.coalesce(func.sum(outcomes.c.opportunity), 0).label("opportunities"),
        func.coalesce(func.sum(outcomes.c.won), 0).label("won"),
        func.coalesce(func.sum(outcomes.c.revenue), 0.0).label("revenue"),
        func.coalesce(func.sum(qualify), 0.0).label("qualify_seconds"),
        func.count(outcomes.c.contacted_at).label("contacted"),
        func.coalesce(func.sum(response), 0.0).label("response_seconds"),
        eligible.label("abandon_eligible"),
        abandoned.label("abandoned"),
        func.coalesce(func.sum(per_lead.c.best_score), 0.0).label("best_score_sum"),
    ]
    statement = select(*columns).select_from(per_lead).join(Lead, Lead.id == per_lead.c.lead_id)
    if not query.primary:
        statement = statement.join(
            LeadScore,
            and_(LeadScore.lead_id == Lead.id, LeadScore.ruleset_name == query.model),
        )
    statement = statement.outerjoin(outcomes, outcomes.c.lead_id == per_lead.c.lead_id)
    # The cohort: filtered here rather than in a HAVING of ``per_lead``, whose row count
    # PostgreSQL then guesses at a hundredth of the truth and joins the leads one by one.
    statement = statement.where(
        per_lead.c.arrived_at >= query.start, per_lead.c.arrived_at < query.end
    )
    if query.source is not None:
        statement = statement.where(source_expression() == query.source)
    if query.owner is not None:
        statement = statement.where(Lead.owner == query.owner)
    statement = statement.group_by(source, letter, band, best_band)

    stage_count = len(query.stages)
    groups = []
    for row in session.execute(statement):
        values = tuple(row)
        reached = tuple(int(v) for v in values[5 : 5 + stage_count])
        rest = values[5 + stage_count :]
        groups.append(
            CohortGroup(
                source=values[0],
                letter=values[1],
                band=int(values[2]),
                best_band=int(values[3]),
                leads=int(values[4]),
                reached=reached,
                handed_over=int(rest[0]),
                opportunities=int(rest[1]),
                won=int(rest[2]),
                revenue=float(rest[3]),
                qualify_seconds=float(rest[4]),
                contacted=int(rest[5]),
                response_seconds=float(rest[6]),
                abandon_eligible=int(rest[7]),
                abandoned=int(rest[8]),
                best_score_sum=float(rest[9]),
            )
        )
    return groups


def crossings_by_day(
    session: Session,
    *,
    model: str,
    stages: Sequence[str],
    start: datetime,
    end: datetime,
    source: str | None = None,
    owner: str | None = None,
) -> list[CrossingCount]:
    """Stage entries upwards (``lead → mql``, ``mql → sql``, ``lead → sql``) per UTC day."""
    if not stages:
        return []
    rh = ReportHistory.__table__.c
    current_rank = _stage_rank(rh.stage, stages)
    previous_rank = _stage_rank(func.coalesce(rh.previous_stage, ""), stages)
    day = _day_of(_dialect(session), rh.changed_at).label("day")
    statement = select(day, rh.stage.label("stage"), func.count().label("n")).where(
        rh.ruleset_name == model,
        rh.changed_at >= start,
        rh.changed_at < end,
        current_rank > previous_rank,
    )
    if source is not None or owner is not None:
        statement = statement.join(Lead, Lead.id == rh.lead_id)
        if source is not None:
            statement = statement.where(source_expression() == source)
        if owner is not None:
            statement = statement.where(Lead.owner == owner)
    statement = statement.group_by(day, rh.stage).order_by(day, rh.stage)
    return [
        CrossingCount(day=str(row.day), stage=str(row.stage), count=int(row.n))
        for row in session.execute(statement)
    ]
