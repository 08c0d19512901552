"""Reports: the procedure's KPIs, the letter × score matrix, funnel, bands, crossings, channels.

``GET /v1/reports/summary`` answers everything in one call (the dashboard's first page); the
other routes answer one part each, over the same period and filters. Definitions are in
``docs/reports.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from leadscore_api.api.deps import LeadsReader, ReadSessionDep, RegistryDep
from leadscore_api.api.problems import problem_responses
from leadscore_api.service import reports as service
from leadscore_api.service.costs import SOURCE_PATTERN
from leadscore_api.service.reports import Part, ReportFilter

router = APIRouter(tags=["reports"])

#: Owners are rep ids or team names: printable text, no control characters.
_OWNER_PATTERN = r"^[^\x00-\x1f\x7f]{1,200}$"


async def report_filter(
    registry: RegistryDep,
    from_: Annotated[
        date | None,
        Query(alias="from", description="First day (UTC) of the period; default: `to` − 89 days."),
    ] = None,
    to: Annotated[
        date | None, Query(description="Last day (UTC) of the period, included; default: today.")
    ] = None,
    source: Annotated[
        str | None,
        Query(
            pattern=SOURCE_PATTERN,
            max_length=100,
            description="Only leads whose `source` attribute is this (`unknown`: none).",
        ),
    ] = None,
    owner: Annotated[
        str | None,
        Query(pattern=_OWNER_PATTERN, description="Only leads owned by this rep or team."),
    ] = None,
    model: Annotated[
        str | None,
        Query(
            pattern=r"^[A-Za-z0-9_.-]{1,100}$",
            description="The ruleset whose stages, letters and scores are read; default: the primary.",
        ),
    ] = None,
) -> ReportFilter:
    return service.make_filter(
        registry, start=from_, end=to, model=model, source=source, owner=owner
    )


FilterDep = Annotated[ReportFilter, Depends(report_filter)]


class PeriodOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: date = Field(alias="from")
    to: date
    days: int


class ReportScope(BaseModel):
    period: PeriodOut
    model: str = Field(description="The ruleset the figures are read under.")
    source: str | None
    owner: str | None
    leads: int = Field(description="Leads that arrived in the period (the cohort).")
    mql_stage: str | None = Field(description="The model's stage counted as MQL.")
    sql_stage: str | None = Field(description="The model's stage counted as SQL.")
    handover_stage: str | None = Field(description="The stage at which sales takes a lead over.")

    @classmethod
    def of(cls, report: service.Report) -> ReportScope:
        f = report.filter
        return cls(
            period=PeriodOut(from_=f.start, to=f.end, days=f.days),
            model=f.model,
            source=f.source,
            owner=f.owner,
            leads=report.leads,
            mql_stage=report.mql_stage,
            sql_stage=report.sql_stage,
            handover_stage=report.handover_stage,
        )


class KpiOut(BaseModel):
    key: str = Field(examples=["lead_conversion_rate"])
    label: str
    label_it: str
    value: float | None = Field(description="None when the data cannot give it (see `note`).")
    unit: Literal["%", "days", "hours", "EUR"]
    target: float
    comparison: Literal["<", ">"] = Field(description="The value must be below (<) or above (>).")
    frequency: Literal["daily", "weekly", "monthly"]
    status: Literal["met", "missed", "unknown"]
    sample: int = Field(description="How many leads, hand-overs or contacts it is computed over.")
    note: str | None

    @classmethod
    def of(cls, kpi: service.Kpi) -> KpiOut:
        d = kpi.definition
        return cls(
            key=d.key,
            label=d.label_en,
            label_it=d.label_it,
            value=kpi.value,
            unit=d.unit,
            target=d.target,
            comparison=d.comparison,
            frequency=d.frequency,
            status=kpi.status,
            sample=kpi.sample,
            note=kpi.note,
        )


class BandOut(BaseModel):
    index: int
    low: float
    high: float | None = Field(description="None for the top band.")
    label: str = Field(examples=["50–89"])

    @classmethod
    def of(cls, band: service.ScoreBand) -> BandOut:
        return cls(index=band.index, low=band.low, high=band.high, label=band.label)


class MatrixCellOut(BaseModel):
    letter: str
    band: int
    count: int
    action: str | None = Field(description="The ruleset's action for the cell.")


class MatrixOut(BaseModel):
    letters: list[str]
    bands: list[BandOut]
    rows: list[list[MatrixCellOut]] = Field(description="One row per letter, one cell per band.")
    unlettered: int
    total: int

    @classmethod
    def of(cls, matrix: service.Matrix) -> MatrixOut:
        return cls(
            letters=matrix.letters,
            bands=[BandOut.of(band) for band in matrix.bands],
            rows=[
                [
                    MatrixCellOut(letter=c.letter, band=c.band, count=c.count, action=c.action)
                    for c in row
                ]
                for row in matrix.rows
            ],
            unlettered=matrix.unlettered,
            total=matrix.total,
        )


class FunnelStepOut(BaseModel):
    key: Literal["lead", "mql", "sql", "opportunity", "won"]
    count: int
    rate_from_previous: float | None = Field(description="Percent of the previous step.")
    rate_from_start: float | None = Field(description="Percent of the leads.")


class BandConversionOut(BaseModel):
    band: BandOut
    leads: int
    mql: int
    opportunities: int
    won: int
    opportunity_rate: float | None
    won_rate: float | None


class CrossingDayOut(BaseModel):
    day: date
    counts: dict[str, int]
    total: int


class CrossingsOut(BaseModel):
    stages: list[str]
    days: list[CrossingDayOut]
    totals: dict[str, int]


class ChannelOut(BaseModel):
    source: str
    leads: int
    mql: int
    sql: int
    opportunities: int
    won: int
    revenue: float
    average_best_score: float | None
    mql_rate: float | None
    conversion_rate: float | None
    cost: float | None
    cost_per_lead: float | None
    roi: float | None = Field(description="(revenue − cost) / cost, in percent.")


class KpisOut(ReportScope):
    kpis: list[KpiOut]


class MatrixReportOut(ReportScope):
    matrix: MatrixOut


class FunnelOut(ReportScope):
    funnel: list[FunnelStepOut]


class ConversionByBandOut(ReportScope):
    conversion_by_band: list[BandConversionOut]


class CrossingsReportOut(ReportScope):
    crossings: CrossingsOut


class ChannelsOut(ReportScope):
    channels: list[ChannelOut]


class SummaryOut(ReportScope):
    kpis: list[KpiOut]
    matrix: MatrixOut
    funnel: list[FunnelStepOut]
    conversion_by_band: list[BandConversionOut]
    crossings: CrossingsOut
    channels: list[ChannelOut]


def _kpis(report: service.Report) -> list[KpiOut]:
    return [KpiOut.of(kpi) for kpi in report.kpis]


def _matrix(report: service.Report) -> MatrixOut:
    assert report.matrix is not None
    return MatrixOut.of(report.matrix)


def _funnel(report: service.Report) -> list[FunnelStepOut]:
    return [FunnelStepOut.model_validate(step, from_attributes=True) for step in report.funnel]


def _bands(report: service.Report) -> list[BandConversionOut]:
    return [
        BandConversionOut(
            band=BandOut.of(item.band),
            leads=item.leads,
            mql=item.mql,
            opportunities=item.opportunities,
            won=item.won,
            opportunity_rate=item.opportunity_rate,
            won_rate=item.won_rate,
        )
        for item in report.conversion_by_band
    ]


def _crossings(report: service.Report) -> CrossingsOut:
    assert report.crossings is not None
    return CrossingsOut.model_validate(report.crossings, from_attributes=True)


def _channels(report: service.Report) -> list[ChannelOut]:
    return [ChannelOut.model_validate(c, from_attributes=True) for c in report.channels]


#: How each part of a report is answered; the answer's field has the part's name.
_RENDER: dict[Part, Callable[[service.Report], Any]] = {
    "kpis": _kpis,
    "matrix": _matrix,
    "funnel": _funnel,
    "conversion_by_band": _bands,
    "crossings": _crossings,
    "channels": _channels,
}

_RESPONSES = problem_responses(401, 403, 422)


def _report_route(
    path: str,
    answer: type[ReportScope],
    parts: tuple[Part, ...],
    summary: str,
    description: str | None = None,
) -> None:
    """Declare ``GET path``: the report's ``parts`` over the period and filters of the query.

    Every report route is this one shape (same parameters, scope and problems), so it is
    written once; the endpoint is named after the path's last segment, as the OpenAPI
    document's ``operationId`` has always been.
    """

    def endpoint(
        _principal: LeadsReader, session: ReadSessionDep, registry: RegistryDep, query: FilterDep
    ) -> ReportScope:
        report = service.build_report(session, registry, query, parts)
        rendered = {part: _RENDER[part](report) for part in parts}
        return answer(**ReportScope.of(report).model_dump(), **rendered)

    endpoint.__name__ = endpoint.__qualname__ = path.rsplit("/", 1)[1].replace("-", "_")
    router.get(
        path, response_model=answer, summary=summary, description=description, responses=_RESPONSES
    )(endpoint)


_report_route(
    "/v1/reports/summary",
    SummaryOut,
    service.ALL_PARTS,
    "Every report of the period in one answer",
    "KPIs, matrix, funnel, conversion by band, crossings per day and channels together.",
)
_report_route(
    "/v1/reports/kpis",
    KpisOut,
    ("kpis",),
    "The six KPIs of the lead-management procedure",
    "Each with its target, measuring frequency and status (met, missed, unknown).",
)
_report_route(
    "/v1/reports/matrix",
    MatrixReportOut,
    ("matrix",),
    "Leads by letter × score band, with each cell's action",
    "The cohort's leads by their current letter and score, in the model's matrix.",
)
_report_route("/v1/reports/funnel", FunnelOut, ("funnel",), "Lead → MQL → SQL → opportunity → won")
_report_route(
    "/v1/reports/conversion-by-band",
    ConversionByBandOut,
    ("conversion_by_band",),
    "Conversion by score band",
    "Leads by the best score they reached, and how many became opportunities and deals.",
)
_report_route(
    "/v1/reports/crossings",
    CrossingsReportOut,
    ("crossings",),
    "Threshold crossings per day",
    "Leads entering each stage (from a lower one) per UTC day, every day of the period.",
)
_report_route(
    "/v1/reports/channels",
    ChannelsOut,
    ("channels",),
    "Lead quality and ROI by channel",
    "Per source: leads, MQL and conversion rates, average best score, revenue, cost, ROI.",
)
