"""``/v1/rulesets/{name}/challenger``: A/B test a stored version beside the active one."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from leadscore_api.api.deps import LiveRegistryDep, ReadSessionDep, RulesAdmin, SessionFactoryDep
from leadscore_api.api.jobs import EmitWebhooks
from leadscore_api.api.problems import problem_responses
from leadscore_api.api.rulesets import Name, Rescore, SwitchOut
from leadscore_api.service import challenger as service
from leadscore_api.service import lifecycle

router = APIRouter(tags=["rulesets"])


class ChallengeOut(BaseModel):
    name: str = Field(description="The active ruleset challenged.")
    version: int = Field(description="The challenger's stored version.")
    sha256: str
    champion_version: int = Field(description="The active version it is compared with.")
    started_at: datetime = Field(description="When the challenge (re)started.")
    changed: bool = Field(description="False when nothing changed (already so).")
    generation: int = Field(description="The activation counter replicas follow.")

    @classmethod
    def of(cls, challenge: service.Challenge) -> ChallengeOut:
        return cls(
            name=challenge.name,
            version=challenge.version,
            sha256=challenge.sha256,
            champion_version=challenge.champion_version,
            started_at=challenge.started_at,
            changed=challenge.changed,
            generation=challenge.generation,
        )


class Counts(BaseModel):
    letter: dict[str, int]
    tier: dict[str, int]
    stage: dict[str, int]


class BandRow(BaseModel):
    band: str = Field(description="Score band, e.g. `60-69`.")
    leads: int
    opportunities: int
    conversion: float | None = Field(description="opportunities ÷ leads; null without leads.")


class SideOut(BaseModel):
    version: int
    counts: Counts = Field(description="The compared leads by letter, tier and stage now.")
    conversion_by_band: list[BandRow] = Field(description="By the current score's band.")
    auc: float | None = Field(
        description="AUC of the current score for predicting an opportunity (null when every"
        " lead, or none, became one)."
    )


class LeadSide(BaseModel):
    stage: str | None
    tier: str | None
    letter: str | None
    score: int


class Disagreement(BaseModel):
    lead_id: str
    opportunity: bool
    champion: LeadSide
    challenger: LeadSide


class StageMove(BaseModel):
    from_: str = Field(alias="from", serialization_alias="from")
    to: str
    leads: int


class Disagreements(BaseModel):
    count: int = Field(description="Leads whose stage or tier differs.")
    by_stage_move: list[StageMove]
    items: list[Disagreement] = Field(description="The first `limit` of them, by lead id.")
    limit: int


class ChallengerReport(BaseModel):
    name: str
    started_at: datetime
    leads: int = Field(description="Leads scored by both since the challenge started.")
    opportunities: int = Field(description="Of them, those with opportunity.created/deal.won.")
    conversion: float | None
    champion_versions: dict[int, int] = Field(
        description="Compared leads by the champion version their row holds (leads not"
        " re-scored since an activation keep the older one until their next event)."
    )
    champion: SideOut
    challenger: SideOut
    disagreements: Disagreements


_PATH = "/v1/rulesets/{name}/challenger"


@router.post(
    _PATH,
    response_model=ChallengeOut,
    summary="Score a stored version beside the active one on every event, without acting",
    description="Every replica scores the challenger from the next refresh on; its results"
    " are stored, never sent, routed nor shown in the lead's history. A lead that existed"
    " before is replayed from its stored events on its next event. Declaring another version"
    " restarts the challenge.",
    responses=problem_responses(401, 403, 404, 409, 422),
)
def start_challenge(
    _principal: RulesAdmin,
    registry: LiveRegistryDep,
    factory: SessionFactoryDep,
    name: Name,
    version: Annotated[
        int, Query(ge=1, le=2_147_483_647, description="The stored version to challenge with.")
    ],
) -> ChallengeOut:
    return ChallengeOut.of(service.start(factory, registry, name, version))


@router.get(
    _PATH,
    response_model=ChallengeOut,
    summary="The running challenger of a ruleset",
    responses=problem_responses(401, 403, 404),
)
def get_challenge(_principal: RulesAdmin, session: ReadSessionDep, name: Name) -> ChallengeOut:
    return ChallengeOut.of(service.get(session, name))


@router.delete(
    _PATH,
    response_model=ChallengeOut,
    summary="Stop the challenger (its stored results go with it)",
    responses=problem_responses(401, 403, 404),
)
def stop_challenge(
    _principal: RulesAdmin, registry: LiveRegistryDep, factory: SessionFactoryDep, name: Name
) -> ChallengeOut:
    return ChallengeOut.of(service.end(factory, registry, name))


@router.get(
    f"{_PATH}/report",
    response_model=ChallengerReport,
    summary="Champion vs challenger on the same leads: counts, conversion by band, AUC",
    responses=problem_responses(401, 403, 404, 422),
)
def challenger_report(
    _principal: RulesAdmin,
    session: ReadSessionDep,
    name: Name,
    limit: Annotated[
        int, Query(ge=0, le=1000, description="Disagreeing leads listed at most.")
    ] = service.DISAGREEMENTS_LIMIT,
) -> ChallengerReport:
    return ChallengerReport.model_validate(service.report(session, name, limit))


@router.post(
    f"{_PATH}/promote",
    response_model=SwitchOut,
    summary="Activate the challenger's version and end the challenge",
    responses=problem_responses(401, 403, 404, 422),
)
def promote_challenger(
    _principal: RulesAdmin,
    registry: LiveRegistryDep,
    factory: SessionFactoryDep,
    name: Name,
    rescore: Rescore = False,
    emit_webhooks: EmitWebhooks = False,
) -> SwitchOut:
    switch, job = service.promote(
        factory, registry, name, lifecycle.Rescore(rescore, emit_webhooks)
    )
    return SwitchOut.of(switch, job)
