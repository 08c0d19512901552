"""The reports of the lead-management procedure: its six KPIs, the matrix, funnel and channels.

Every figure is about a **cohort**: the leads that arrived in the period (their first scoring,
in event time), followed to today. The database does the counting
(``storage.repositories.reports``); this module adds the grouped counts up, divides, and
compares each KPI with its target. Definitions, with the reasons for each choice, are in
``docs/reports.md``; the values are plain dataclasses so that the API and the dashboard render
the same objects.

A KPI the data cannot support (no costs entered, no lead handed over yet) has the status
``unknown`` and a note saying why: never a made-up zero.
"""

from __future__ import annotations

import calendar
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

from sqlalchemy.orm import Session

from leadscore_api.errors import InvalidInput
from leadscore_api.scoring import LoadedRuleset
from leadscore_api.service.costs import CostEntry, costs_for_months
from leadscore_api.service.rulesets import RulesetRegistry
from leadscore_api.storage.repositories import reports as reports_repo
from leadscore_api.storage.repositories.reports import CohortGroup, CohortQuery

#: The period when the caller names none: the last 90 days, today included.
DEFAULT_DAYS = 90
#: The days a period may name: sales history, not the ends of the calendar (where the
#: arithmetic of the period would overflow).
FIRST_DAY = date(1900, 1, 1)
LAST_DAY = date(2999, 12, 31)
#: The longest period one report covers (three years).
MAX_DAYS = 1096
#: A hand-over younger than this is not yet "abandoned": sales has a day to take it up (the
#: procedure's first contact within 24 hours).
ABANDON_GRACE = timedelta(hours=24)

Status = Literal["met", "missed", "unknown"]


@dataclass(frozen=True)
class ReportFilter:
    """What the caller asked for, checked: a period of whole UTC days and optional filters."""

    start: date
    end: date  # inclusive
    model: str
    source: str | None = None
    owner: str | None = None

    @property
    def start_at(self) -> datetime:
        return datetime.combine(self.start, time(), tzinfo=UTC)

    @property
    def end_at(self) -> datetime:
        """The first moment after the period (exclusive bound)."""
        return datetime.combine(self.end + timedelta(days=1), time(), tzinfo=UTC)

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1


@dataclass(frozen=True)
class KpiDefinition:
    key: str
    label_en: str
    label_it: str
    unit: Literal["%", "days", "hours", "EUR"]
    comparison: Literal["<", ">"]
    target: float
    frequency: Literal["daily", "weekly", "monthly"]


#: The procedure's KPI table (seed 004), in its order.
KPI_DEFINITIONS: tuple[KpiDefinition, ...] = (
    KpiDefinition(
        "lead_conversion_rate", "Lead conversion rate", "Tasso di conversione lead",
        "%", ">", 15.0, "monthly",
    ),
    KpiDefinition(
        "time_to_qualify", "Average time to qualify", "Tempo medio di qualificazione",
        "days", "<", 3.0, "weekly",
    ),
    KpiDefinition(
        "cost_per_lead", "Cost per lead", "Costo per lead", "EUR", "<", 50.0, "monthly"
    ),
    KpiDefinition(
        "mql_to_sql_conversion", "MQL to SQL conversion", "Conversione MQL → SQL",
        "%", ">", 30.0, "monthly",
    ),
    KpiDefinition(
        "response_time", "Lead response time", "Tempo di risposta lead",
        "hours", "<", 4.0, "daily",
    ),
    KpiDefinition(
        "abandonment_rate", "Lead abandonment rate", "Tasso di abbandono lead",
        "%", "<", 20.0, "monthly",
    ),
)  # fmt: skip
KPI_BY_KEY = {definition.key: definition for definition in KPI_DEFINITIONS}


@dataclass(frozen=True)
class Kpi:
    definition: KpiDefinition
    #: None when the data cannot give the figure; ``note`` says why.
    value: float | None
    status: Status
    #: How many leads (or hand-overs, contacts) the figure is computed over.
    sample: int
    note: str | None = None


@dataclass(frozen=True)
class ScoreBand:
    index: int
    low: float
    #: None for the top band.
    high: float | None

    @property
    def label(self) -> str:
        if self.high is None:
            return f"≥{self.low:g}"
        return f"{self.low:g}–{self.high:g}"


@dataclass(frozen=True)
class MatrixCell:
    letter: str
    band: int
    count: int
    #: The ruleset's action for this cell (e.g. ``priority_contact``); None without a matrix.
    action: str | None


@dataclass(frozen=True)
class Matrix:
    letters: list[str]
    bands: list[ScoreBand]
    #: Row by row: for each letter, one cell per band.
    rows: list[list[MatrixCell]]
    #: Cohort leads without a letter the matrix has a row for (e.g. under a model with none).
    unlettered: int
    total: int


@dataclass(frozen=True)
class FunnelStep:
    key: str
    count: int
    #: Percent of the previous step (None for the first, or when the previous is 0).
    rate_from_previous: float | None
    rate_from_start: float | None


@dataclass(frozen=True)
class BandConversion:
    band: ScoreBand
    leads: int
    mql: int
    opportunities: int
    won: int
    opportunity_rate: float | None
    won_rate: float | None


@dataclass(frozen=True)
class CrossingDay:
    day: date
    #: Stage name → leads that entered it (from a lower stage) that day.
    counts: dict[str, int]
    total: int


@dataclass(frozen=True)
class Crossings:
    stages: list[str]
    days: list[CrossingDay]
    totals: dict[str, int]


@dataclass(frozen=True)
class Channel:
    source: str
    leads: int
    mql: int
    sql: int
    opportunities: int
    won: int
    revenue: float
    #: Average of each lead's best score since it arrived: the channel's lead quality.
    average_best_score: float | None
    mql_rate: float | None
    conversion_rate: float | None
    #: The period's share of the entered monthly costs; None when a month is missing.
    cost: float | None
    cost_per_lead: float | None
    #: (revenue − cost) / cost, in percent; None without a cost (or a cost of 0).
    roi: float | None


@dataclass(frozen=True)
class Report:
    filter: ReportFilter
    mql_stage: str | None
    sql_stage: str | None
    handover_stage: str | None
    leads: int
    kpis: list[Kpi] = field(default_factory=list)
    matrix: Matrix | None = None
    funnel: list[FunnelStep] = field(default_factory=list)
    conversion_by_band: list[BandConversion] = field(default_factory=list)
    crossings: Crossings | None = None
    channels: list[Channel] = field(default_factory=list)


Part = Literal["kpis", "matrix", "funnel", "conversion_by_band", "crossings", "channels"]
ALL_PARTS: tuple[Part, ...] = (
    "kpis",
    "matrix",
    "funnel",
    "conversion_by_band",
    "crossings",
    "channels",
)


# -- the period and the model ----------------------------------------------------------------


def make_filter(
    registry: RulesetRegistry,
    *,
    start: date | None,
    end: date | None,
    model: str | None,
    source: str | None,
    owner: str | None,
    today: date | None = None,
) -> ReportFilter:
    """Check the caller's parameters; the default period is the last 90 days up to today."""
    today = today or datetime.now(UTC).date()
    for name, value in (("from", start), ("to", end)):
        if value is not None and not FIRST_DAY <= value <= LAST_DAY:
            raise InvalidInput.field(
                name, f"must be between {FIRST_DAY.isoformat()} and {LAST_DAY.isoformat()}"
            )
    end = end or today
    start = start or end - timedelta(days=DEFAULT_DAYS - 1)
    if start > end:
        raise InvalidInput.field("from", f"must be on or before `to` ({end.isoformat()})")
    if (end - start).days + 1 > MAX_DAYS:
        raise InvalidInput.field("from", f"the period may be at most {MAX_DAYS} days long")
    name = model or registry.primary_name
    if name not in registry.rulesets:
        loaded = ", ".join(sorted(registry.rulesets))
        raise InvalidInput.field("model", f"no ruleset {name!r} is loaded (loaded: {loaded})")
    return ReportFilter(start=start, end=end, model=name, source=source, owner=owner)


def score_bands(loaded: LoadedRuleset) -> list[ScoreBand]:
    """The matrix's score bands, else the tiers' thresholds, as bands; [0–100] at least."""
    ruleset = loaded.ruleset
    if ruleset.score_bands:
        lows = sorted(ruleset.score_bands)
    elif ruleset.tiers:
        lows = sorted(set(ruleset.tiers.values()))
    else:
        lows = [0.0]
    if lows[0] > 0:
        lows = [0.0, *lows]
    bands = []
    for index, low in enumerate(lows):
        high = lows[index + 1] - 1 if index + 1 < len(lows) else None
        bands.append(ScoreBand(index=index, low=float(low), high=high))
    return bands


def _stages(loaded: LoadedRuleset) -> tuple[list[str], str | None, str | None, int | None]:
    """The model's stages in order, its MQL and SQL stages, and the hand-over stage's index.

    MQL is the first stage above ``lead``; SQL the stage named ``sql``, else the second one.
    The hand-over is the stage of the SLA that ``lead.contacted`` keeps (the first contact
    after the hand-over), else the SQL stage.
    """
    ruleset = loaded.ruleset
    stages = list(ruleset.stages)
    mql = stages[0] if stages else None
    sql = "sql" if "sql" in stages else stages[1] if len(stages) > 1 else None
    handover: str | None = next(
        (rule.stage for rule in ruleset.sla if "lead.contacted" in rule.met_by), sql
    )
    index = stages.index(handover) if handover in stages else None
    return stages, mql, sql, index


# -- the report --------------------------------------------------------------------------------


def build_report(
    session: Session,
    registry: RulesetRegistry,
    query: ReportFilter,
    parts: Iterable[Part] = ALL_PARTS,
    now: datetime | None = None,
) -> Report:
    """Compute the asked parts: one grouped cohort query, plus costs and crossings if needed."""
    wanted = set(parts)
    now = now or datetime.now(UTC)
    loaded = registry.rulesets[query.model]
    stages, mql, sql, handover = _stages(loaded)
    bands = score_bands(loaded)
    mql_index = 0 if mql is not None else None
    sql_index = stages.index(sql) if sql is not None else None

    groups: list[CohortGroup] = []
    if wanted - {"crossings"}:
        groups = reports_repo.cohort_groups(
            session,
            CohortQuery(
                model=query.model,
                primary=query.model == registry.primary_name,
                start=query.start_at,
                end=query.end_at,
                stages=stages,
                handover=handover,
                bands=[band.low for band in bands],
                abandon_cutoff=min(query.end_at, now) - ABANDON_GRACE,
                source=query.source,
                owner=query.owner,
            ),
        )
    costs: list[CostEntry] = []
    if wanted & {"kpis", "channels"}:
        costs = costs_for_months(session, months_of(query.start, query.end))
        if query.source is not None:
            costs = [cost for cost in costs if cost.source == query.source]
    spent = _period_costs(costs, query)

    return Report(
        filter=query,
        mql_stage=mql,
        sql_stage=sql,
        handover_stage=stages[handover] if handover is not None else None,
        leads=sum(group.leads for group in groups),
        kpis=_kpis(groups, spent, query, mql_index, sql_index, handover)
        if "kpis" in wanted
        else [],
        matrix=_matrix(groups, loaded, bands) if "matrix" in wanted else None,
        funnel=_funnel(groups, mql_index, sql_index) if "funnel" in wanted else [],
        conversion_by_band=_by_band(groups, bands, mql_index)
        if "conversion_by_band" in wanted
        else [],
        crossings=_crossings(session, query, stages) if "crossings" in wanted else None,
        channels=_channels(groups, spent, mql_index, sql_index) if "channels" in wanted else [],
    )


def months_of(start: date, end: date) -> list[str]:
    """Every calendar month the period touches, as ``YYYY-MM``."""
    months = []
    year, month = start.year, start.month
    while (year, month) <= (end.year, end.month):
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


@dataclass(frozen=True)
class _Spent:
    #: Source → the period's share of its monthly costs, for sources with every month entered.
    by_source: dict[str, float]
    #: Sources with some months entered but not all.
    incomplete: list[str]


def _period_costs(costs: Sequence[CostEntry], query: ReportFilter) -> _Spent:
    """Each month's cost counts for the days of the month inside the period."""
    months = months_of(query.start, query.end)
    shares: dict[str, float] = defaultdict(float)
    seen: dict[str, set[str]] = defaultdict(set)
    for cost in costs:
        year, month = int(cost.month[:4]), int(cost.month[5:])
        length = calendar.monthrange(year, month)[1]
        first = max(query.start, date(year, month, 1))
        last = min(query.end, date(year, month, length))
        inside = (last - first).days + 1
        if inside <= 0:
            continue
        shares[cost.source] += cost.amount * inside / length
        seen[cost.source].add(cost.month)
    complete = {source for source, got in seen.items() if len(got) == len(months)}
    return _Spent(
        by_source={source: shares[source] for source in sorted(complete)},
        incomplete=sorted(set(seen) - complete),
    )


def _pct(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def _status(definition: KpiDefinition, value: float | None) -> Status:
    if value is None:
        return "unknown"
    met = value > definition.target if definition.comparison == ">" else value < definition.target
    return "met" if met else "missed"


def _kpi(key: str, value: float | None, sample: int, note: str | None = None) -> Kpi:
    definition = KPI_BY_KEY[key]
    status = _status(definition, value)
    shown = round(value, 2) if value is not None else None
    return Kpi(definition=definition, value=shown, status=status, sample=sample, note=note)


def _kpis(
    groups: Sequence[CohortGroup],
    spent: _Spent,
    query: ReportFilter,
    mql: int | None,
    sql: int | None,
    handover: int | None,
) -> list[Kpi]:
    leads = sum(g.leads for g in groups)
    opportunities = sum(g.opportunities for g in groups)
    mqls = sum(g.reached[mql] for g in groups) if mql is not None else 0
    sqls = sum(g.reached[sql] for g in groups) if sql is not None else 0
    qualify_seconds = sum(g.qualify_seconds for g in groups)
    contacted = sum(g.contacted for g in groups)
    response_seconds = sum(g.response_seconds for g in groups)
    handed = sum(g.handed_over for g in groups)
    eligible = sum(g.abandon_eligible for g in groups)
    abandoned = sum(g.abandoned for g in groups)
    no_leads = "no lead arrived in the period"

    kpis = [
        _kpi(
            "lead_conversion_rate",
            100.0 * opportunities / leads if leads else None,
            leads,
            None if leads else no_leads,
        )
    ]
    if mql is None:
        kpis.append(_kpi("time_to_qualify", None, 0, "the model has no stage above lead"))
    else:
        kpis.append(
            _kpi(
                "time_to_qualify",
                qualify_seconds / mqls / 86400 if mqls else None,
                mqls,
                None if mqls else "no lead of the period reached the MQL stage",
            )
        )
    kpis.append(_cost_per_lead(groups, spent, query))
    if mql is None or sql is None:
        kpis.append(_kpi("mql_to_sql_conversion", None, 0, "the model has no MQL and SQL stages"))
    else:
        kpis.append(
            _kpi(
                "mql_to_sql_conversion",
                100.0 * sqls / mqls if mqls else None,
                mqls,
                None if mqls else "no lead of the period reached the MQL stage",
            )
        )
    if handover is None:
        kpis.append(_kpi("response_time", None, 0, "the model has no hand-over stage"))
    else:
        note = None
        if not handed:
            note = "no lead of the period was handed over to sales"
        elif not contacted:
            note = f"none of the {handed} leads handed over has a lead.contacted outcome yet"
        elif contacted < handed:
            note = f"{handed - contacted} of {handed} leads handed over are not contacted yet"
        kpis.append(
            _kpi(
                "response_time",
                response_seconds / contacted / 3600 if contacted else None,
                contacted,
                note,
            )
        )
        kpis.append(
            _kpi(
                "abandonment_rate",
                100.0 * abandoned / eligible if eligible else None,
                eligible,
                None if eligible else "no lead was handed over to sales more than a day ago",
            )
        )
    if handover is None:
        kpis.append(_kpi("abandonment_rate", None, 0, "the model has no hand-over stage"))
    return kpis


def _cost_per_lead(groups: Sequence[CohortGroup], spent: _Spent, query: ReportFilter) -> Kpi:
    if query.owner is not None:
        return _kpi("cost_per_lead", None, 0, "costs are entered per source, not per owner")
    note: str | None
    if not spent.by_source:
        note = "no acquisition costs are entered for the period's months"
        if spent.incomplete:
            note = f"costs miss some of the period's months for: {', '.join(spent.incomplete)}"
        return _kpi("cost_per_lead", None, 0, note)
    leads = sum(g.leads for g in groups if g.source in spent.by_source)
    cost = sum(spent.by_source.values())
    uncosted = sorted({g.source for g in groups if g.source not in spent.by_source})
    note = None
    if uncosted:
        note = (
            f"leads from sources without costs for every month are left out: {', '.join(uncosted)}"
        )
    if not leads:
        return _kpi("cost_per_lead", None, 0, "the sources with costs brought no lead")
    return _kpi("cost_per_lead", cost / leads, leads, note)


def _matrix(groups: Sequence[CohortGroup], loaded: LoadedRuleset, bands: list[ScoreBand]) -> Matrix:
    ruleset = loaded.ruleset
    table = ruleset.matrix or {}
    letters: list[str] = (
        list(table) if table else sorted(ruleset.letter.bands) if ruleset.letter else []
    )
    counts: dict[tuple[str, int], int] = defaultdict(int)
    unlettered = 0
    for group in groups:
        if group.letter in letters:
            counts[(group.letter, group.band)] += group.leads
        else:
            unlettered += group.leads
    rows = []
    for letter in letters:
        actions = table.get(letter)  # type: ignore[call-overload,unused-ignore]
        rows.append(
            [
                MatrixCell(
                    letter=letter,
                    band=band.index,
                    count=counts[(letter, band.index)],
                    action=actions[band.index] if actions and band.index < len(actions) else None,
                )
                for band in bands
            ]
        )
    return Matrix(
        letters=letters,
        bands=bands,
        rows=rows,
        unlettered=unlettered,
        total=sum(g.leads for g in groups),
    )


def _funnel(groups: Sequence[CohortGroup], mql: int | None, sql: int | None) -> list[FunnelStep]:
    counts = [
        ("lead", sum(g.leads for g in groups)),
        ("mql", sum(g.reached[mql] for g in groups) if mql is not None else 0),
        ("sql", sum(g.reached[sql] for g in groups) if sql is not None else 0),
        ("opportunity", sum(g.opportunities for g in groups)),
        ("won", sum(g.won for g in groups)),
    ]
    start = counts[0][1]
    steps = []
    previous: int | None = None
    for key, count in counts:
        steps.append(
            FunnelStep(
                key=key,
                count=count,
                rate_from_previous=_pct(count, previous) if previous is not None else None,
                rate_from_start=_pct(count, start),
            )
        )
        previous = count
    return steps


def _by_band(
    groups: Sequence[CohortGroup], bands: list[ScoreBand], mql: int | None
) -> list[BandConversion]:
    result = []
    for band in bands:
        inside = [g for g in groups if g.best_band == band.index]
        leads = sum(g.leads for g in inside)
        opportunities = sum(g.opportunities for g in inside)
        won = sum(g.won for g in inside)
        result.append(
            BandConversion(
                band=band,
                leads=leads,
                mql=sum(g.reached[mql] for g in inside) if mql is not None else 0,
                opportunities=opportunities,
                won=won,
                opportunity_rate=_pct(opportunities, leads),
                won_rate=_pct(won, leads),
            )
        )
    return result


def _channels(
    groups: Sequence[CohortGroup], spent: _Spent, mql: int | None, sql: int | None
) -> list[Channel]:
    by_source: dict[str, list[CohortGroup]] = defaultdict(list)
    for group in groups:
        by_source[group.source].append(group)
    channels = []
    for source in sorted(set(by_source) | set(spent.by_source)):
        inside = by_source.get(source, [])
        leads = sum(g.leads for g in inside)
        revenue = round(sum(g.revenue for g in inside), 2)
        opportunities = sum(g.opportunities for g in inside)
        mqls = sum(g.reached[mql] for g in inside) if mql is not None else 0
        cost = round(spent.by_source[source], 2) if source in spent.by_source else None
        channels.append(
            Channel(
                source=source,
                leads=leads,
                mql=mqls,
                sql=sum(g.reached[sql] for g in inside) if sql is not None else 0,
                opportunities=opportunities,
                won=sum(g.won for g in inside),
                revenue=revenue,
                average_best_score=round(sum(g.best_score_sum for g in inside) / leads, 2)
                if leads
                else None,
                mql_rate=_pct(mqls, leads),
                conversion_rate=_pct(opportunities, leads),
                cost=cost,
                cost_per_lead=round(cost / leads, 2) if cost is not None and leads else None,
                roi=round(100.0 * (revenue - cost) / cost, 2) if cost else None,
            )
        )
    return channels


def _crossings(session: Session, query: ReportFilter, stages: list[str]) -> Crossings:
    rows = reports_repo.crossings_by_day(
        session,
        model=query.model,
        stages=stages,
        start=query.start_at,
        end=query.end_at,
        source=query.source,
        owner=query.owner,
    )
    by_day: dict[str, dict[str, int]] = defaultdict(dict)
    for row in rows:
        by_day[row.day][row.stage] = row.count
    days = []
    for offset in range(query.days):
        day = query.start + timedelta(days=offset)
        counts = {stage: by_day.get(day.isoformat(), {}).get(stage, 0) for stage in stages}
        days.append(CrossingDay(day=day, counts=counts, total=sum(counts.values())))
    totals = {stage: sum(day.counts[stage] for day in days) for stage in stages}
    return Crossings(stages=stages, days=days, totals=totals)
