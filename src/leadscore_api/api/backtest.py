"""``POST /v1/rulesets/backtest``: what a candidate ruleset would have done on stored history."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from leadscore_api.api.deps import ReadSessionDep, RegistryDep, RulesAdmin
from leadscore_api.api.problems import problem_responses
from leadscore_api.errors import InvalidInput
from leadscore_api.service import backtest as service

router = APIRouter(tags=["rulesets"])

#: A ruleset file is a few kilobytes; the body limit applies too.
MAX_CONTENT_CHARS = 512 * 1024


class BacktestStoredRuleset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    version: int = Field(ge=1, le=2**31 - 1)


class BacktestRequest(BaseModel):
    """The candidate (YAML text, or a stored name and version) and the period to replay."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    content: str | None = Field(
        default=None,
        max_length=MAX_CONTENT_CHARS,
        description="The candidate ruleset file's text (YAML).",
    )
    filename: str = Field(
        default="candidate.yaml",
        min_length=1,
        max_length=200,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="The name problems in `content` are reported under (`FILE:LINE: message`).",
    )
    ruleset: BacktestStoredRuleset | None = Field(
        default=None, description="A ruleset version stored by the service, instead of `content`."
    )
    from_: str | None = Field(
        default=None,
        alias="from",
        max_length=64,
        description="RFC 3339; leads with an event at or after it (default: all history).",
    )
    to: str | None = Field(
        default=None,
        max_length=64,
        description="RFC 3339; events up to it are replayed (default: now).",
    )
    stage_changes_limit: int = Field(
        default=service.DEFAULT_CHANGES_LIMIT,
        ge=0,
        le=10_000,
        description="How many leads whose stage would change are listed (all are counted).",
    )


class BacktestRulesetRef(BaseModel):
    name: str
    version: int
    sha256: str


class BacktestPeriod(BaseModel):
    from_: str | None = Field(alias="from", serialization_alias="from")
    to: str


class BacktestMedianDays(BaseModel):
    to_sql: float | None
    to_opportunity: float | None
    sql_to_opportunity: float | None


class BacktestCounts(BaseModel):
    letter: dict[str, int]
    tier: dict[str, int]
    stage: dict[str, int]


class BacktestBandRow(BaseModel):
    band: str
    leads: int
    opportunities: int
    conversion: float | None


class BacktestStageRow(BaseModel):
    stage: str
    leads: int
    opportunities: int
    conversion: float | None


class BacktestSweepRow(BaseModel):
    threshold: int
    sql: int
    opportunities: int
    conversion: float | None
    median_days_to_opportunity: float | None


class BacktestRulesetSummary(BaseModel):
    leads: int
    opportunities: int
    won: int
    conversion: float | None
    auc: float | None = Field(
        description="AUC of the decision score for predicting an opportunity."
    )
    sql_stage: str | None
    median_days: BacktestMedianDays
    counts: BacktestCounts
    conversion_by_band: list[BacktestBandRow]
    conversion_by_stage: list[BacktestStageRow]
    threshold_sweep: list[BacktestSweepRow]


class BacktestStageMove(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from", serialization_alias="from")
    to: str
    leads: int


class BacktestLeadStage(BaseModel):
    stage: str
    score: int


class BacktestStageChange(BaseModel):
    lead_id: str
    active: BacktestLeadStage
    candidate: BacktestLeadStage


class BacktestStageChanges(BaseModel):
    count: int
    by_move: list[BacktestStageMove]
    items: list[BacktestStageChange]
    limit: int


class BacktestRulesets(BaseModel):
    active: BacktestRulesetRef
    candidate: BacktestRulesetRef


class BacktestReport(BaseModel):
    period: BacktestPeriod
    leads: int
    events: int
    rulesets: BacktestRulesets
    active: BacktestRulesetSummary
    candidate: BacktestRulesetSummary
    stage_changes: BacktestStageChanges
    elapsed_seconds: float | None


@router.post(
    "/v1/rulesets/backtest",
    response_model=BacktestReport,
    response_model_by_alias=True,
    summary="Replay stored events under a candidate ruleset and the active one, side by side",
    responses=problem_responses(400, 401, 403, 404, 413, 422),
)
def backtest(
    body: BacktestRequest,
    _principal: RulesAdmin,
    registry: RegistryDep,
    session: ReadSessionDep,
) -> BacktestReport:
    """Nothing is written; the replay runs in this request (use the CLI for large histories)."""
    if (body.content is None) == (body.ruleset is None):
        raise InvalidInput.field("content", "give either `content` or `ruleset`, not both")
    period = service.parse_period(body.from_, body.to)
    if body.content is not None:
        candidate = service.candidate_from_text(body.content, body.filename)
    else:
        assert body.ruleset is not None
        candidate = service.candidate_from_store(session, body.ruleset.name, body.ruleset.version)
    result = service.run_backtest(
        session,
        registry.primary,
        candidate,
        period,
        changes_limit=body.stage_changes_limit,
    )
    return BacktestReport.model_validate(result)
