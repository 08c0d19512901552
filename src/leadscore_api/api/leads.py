"""The CRM API for leads: read, list, history, explain, update, merge, erase."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from leadscore_api.api.deps import (
    LeadsReader,
    LeadsWriter,
    ReadSessionDep,
    RegistryDep,
    SessionFactoryDep,
)
from leadscore_api.api.problems import problem_responses
from leadscore_api.service import leads as service
from leadscore_api.storage.models import Lead, ScoreChange
from leadscore_api.storage.repositories.leads import LeadData

router = APIRouter(tags=["leads"])

LeadId = Annotated[str, Path(min_length=1, max_length=40, description="The lead's id.")]
Cursor = Annotated[
    str | None,
    Query(max_length=2000, description="`next_cursor` from the previous page."),
]
Limit = Annotated[int, Query(ge=1, le=500, description="Items per page.")]


class RulesetRef(BaseModel):
    name: str | None
    version: int | None


class LeadOut(BaseModel):
    id: str
    email: str | None
    external_id: str | None
    attributes: dict[str, Any]
    letter: str | None = Field(description="A, B, C or D (from fit).")
    score: int = Field(description="0–100; the exact value is in `explain`.")
    tier: str | None = Field(description="hot, warm or cold.")
    stage: str = Field(description="lead, mql, sql, or a stage the ruleset adds.")
    components: dict[str, float]
    next_action: str | None
    next_action_due: datetime | None
    owner: str | None = Field(description="The rep the lead is assigned to, else its team.")
    team: str | None = Field(description="The team the routing rules chose.")
    ruleset: RulesetRef
    models: dict[str, dict[str, Any]] = Field(
        description="Summaries under the other active rulesets, by ruleset name."
    )
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, lead: Lead | LeadData) -> LeadOut:
        return cls(
            id=lead.id,
            email=lead.email,
            external_id=lead.external_id,
            attributes=lead.attributes or {},
            letter=lead.letter,
            score=lead.score,
            tier=lead.tier,
            stage=lead.stage,
            components=lead.components or {},
            next_action=lead.next_action,
            next_action_due=lead.next_action_due,
            owner=lead.owner,
            team=lead.team,
            ruleset=RulesetRef(name=lead.ruleset_name, version=lead.ruleset_version),
            models=lead.models or {},
            created_at=lead.created_at,
            updated_at=lead.updated_at,
        )


class LeadList(BaseModel):
    items: list[LeadOut]
    next_cursor: str | None


class HistoryItem(BaseModel):
    id: int
    changed_at: datetime
    cause: str = Field(description="event, attributes (API update), merge or rescore.")
    event_id: str | None = Field(description="The latest event folded into this change.")
    event_ids: list[str] = Field(description="Every event of the request folded into it.")
    event_type: str | None
    ruleset: dict[str, Any]
    previous: dict[str, Any] | None
    current: dict[str, Any]
    explanation: dict[str, Any]

    @classmethod
    def of(
        cls, change: ScoreChange, event_type: str | None, explanation: dict[str, Any]
    ) -> HistoryItem:
        return cls(
            id=change.id,
            changed_at=change.changed_at,
            cause=change.cause,
            event_id=change.event_id,
            event_ids=change.event_ids or ([change.event_id] if change.event_id else []),
            event_type=event_type,
            ruleset={
                "name": change.ruleset_name,
                "version": change.ruleset_version,
                "sha256": change.ruleset_sha256,
            },
            previous=change.previous,
            current=change.current,
            explanation=explanation,
        )


class HistoryPage(BaseModel):
    items: list[HistoryItem]
    next_cursor: str | None


class ExplainOut(BaseModel):
    """A lead re-evaluated now; ``explanation`` names each component's rules and their points."""

    lead_id: str
    ruleset: RulesetRef
    as_of: str = Field(description="The moment of the evaluation (RFC 3339).")
    letter: str | None
    score: int
    score_exact: float = Field(description="Before rounding, decay included.")
    tier: str | None
    stage: str
    stages_reached: dict[str, str] = Field(description="When each stage was first reached.")
    components: dict[str, float]
    next_action: str | None
    next_action_due: str | None
    owner: str | None
    sla: list[dict[str, Any]]
    requalify_due: str | None
    attributes: dict[str, Any]
    explanation: dict[str, Any]
    models: dict[str, dict[str, Any]] = Field(
        description="The same under the other active rulesets, by ruleset name."
    )


class AttributesUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attributes: dict[str, Any] = Field(
        description="Attributes to set; a null value removes the attribute.",
        examples=[{"role": "CEO", "employees": 120}],
    )


class MergeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    other_lead_id: str = Field(min_length=1, max_length=40)


def lead_filters(
    email: Annotated[str | None, Query(max_length=320)] = None,
    external_id: Annotated[str | None, Query(max_length=200)] = None,
    tier: Annotated[str | None, Query(max_length=40)] = None,
    stage: Annotated[str | None, Query(max_length=40)] = None,
    letter: Annotated[str | None, Query(max_length=8)] = None,
    min_score: Annotated[int | None, Query(ge=0, le=100)] = None,
    owner: Annotated[str | None, Query(max_length=200)] = None,
    updated_since: Annotated[AwareDatetime | None, Query()] = None,
) -> service.LeadFilters:
    """The filters of ``GET /v1/leads`` (and of its export), as query parameters."""
    return service.LeadFilters(
        email=email,
        external_id=external_id,
        tier=tier,
        stage=stage,
        letter=letter,
        min_score=min_score,
        owner=owner,
        updated_since=updated_since,
    )


LeadFiltersDep = Annotated[service.LeadFilters, Depends(lead_filters)]


@router.get(
    "/v1/leads",
    response_model=LeadList,
    summary="Find or list leads",
    responses=problem_responses(400, 401, 403, 422),
)
def list_leads(
    _principal: LeadsReader,
    session: ReadSessionDep,
    filters: LeadFiltersDep,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> LeadList:
    """Leads ordered by last update (oldest first), with an opaque cursor for the next page."""
    leads, next_cursor = service.list_leads(session, filters, cursor, limit)
    return LeadList(items=[LeadOut.of(lead) for lead in leads], next_cursor=next_cursor)


@router.get(
    "/v1/leads/{lead_id}",
    response_model=LeadOut,
    summary="A lead",
    responses=problem_responses(401, 403, 404),
)
def get_lead(_principal: LeadsReader, session: ReadSessionDep, lead_id: LeadId) -> LeadOut:
    return LeadOut.of(service.get_lead(session, lead_id))


@router.get(
    "/v1/leads/{lead_id}/history",
    response_model=HistoryPage,
    summary="Every change of a lead's scoring",
    responses=problem_responses(400, 401, 403, 404),
)
def get_history(
    _principal: LeadsReader,
    session: ReadSessionDep,
    registry: RegistryDep,
    lead_id: LeadId,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> HistoryPage:
    """Oldest first: the event (or API action) that caused each change, the ruleset version, why."""
    rows, next_cursor = service.history(session, registry, lead_id, cursor, limit)
    items = [HistoryItem.of(*row) for row in rows]
    return HistoryPage(items=items, next_cursor=next_cursor)


@router.get(
    "/v1/leads/{lead_id}/explain",
    response_model=ExplainOut,
    summary="The current score broken down by component and rule",
    responses=problem_responses(401, 403, 404),
)
def get_explain(
    _principal: LeadsReader, session: ReadSessionDep, registry: RegistryDep, lead_id: LeadId
) -> ExplainOut:
    """Re-evaluated as of now (decay applied up to this moment), under every active ruleset."""
    return ExplainOut.model_validate(service.explain(session, registry, lead_id))


@router.patch(
    "/v1/leads/{lead_id}",
    response_model=LeadOut,
    summary="Update a lead's attributes (re-scores)",
    responses=problem_responses(401, 403, 404, 413, 422, 503),
)
def patch_lead(
    _principal: LeadsWriter,
    session_factory: SessionFactoryDep,
    registry: RegistryDep,
    lead_id: LeadId,
    body: AttributesUpdate,
) -> LeadOut:
    """Stored as an internal `lead.attributes_updated` event, so a replay reproduces it."""
    return LeadOut.of(
        service.update_attributes(session_factory, registry, lead_id, body.attributes)
    )


@router.post(
    "/v1/leads/{lead_id}/merge",
    response_model=LeadOut,
    summary="Merge another lead into this one",
    responses=problem_responses(401, 403, 404, 422, 503),
)
def merge_lead(
    _principal: LeadsWriter,
    session_factory: SessionFactoryDep,
    registry: RegistryDep,
    lead_id: LeadId,
    body: MergeRequest,
) -> LeadOut:
    """Identities, events and history of `other_lead_id` move here; re-scored from all events."""
    return LeadOut.of(service.merge_leads(session_factory, registry, lead_id, body.other_lead_id))


@router.delete(
    "/v1/leads/{lead_id}",
    status_code=204,
    summary="Erase a lead (GDPR)",
    responses=problem_responses(401, 403, 404, 503),
)
def delete_lead(
    _principal: LeadsWriter, session_factory: SessionFactoryDep, lead_id: LeadId
) -> Response:
    """Personal data, identities, events and history go; only anonymous counts remain."""
    service.erase_lead(session_factory, lead_id)
    return Response(status_code=204)
