"""Acquisition costs per source and month: the figures behind cost per lead and channel ROI."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from leadscore_api.api.deps import LeadsReader, LeadsWriter, ReadSessionDep, SessionFactoryDep
from leadscore_api.api.problems import problem_responses
from leadscore_api.errors import LeadscoreError
from leadscore_api.service import costs as service
from leadscore_api.service.costs import MONTH_PATTERN, SOURCE_PATTERN, CostEntry

router = APIRouter(tags=["costs"])


class UnsupportedMediaType(LeadscoreError):
    """The import takes CSV text only (no XLSX, no JSON) so that one parser checks every row."""

    status = 415
    problem_type = "unsupported-media-type"
    title = "Unsupported media type"


SourcePath = Annotated[
    str,
    Path(
        pattern=SOURCE_PATTERN,
        max_length=100,
        description="The acquisition source, as the leads' `source` attribute names it.",
        examples=["paid_search"],
    ),
]
MonthPath = Annotated[
    str, Path(pattern=MONTH_PATTERN, description="YYYY-MM.", examples=["2026-11"])
]
MonthQuery = Annotated[str | None, Query(pattern=MONTH_PATTERN, description="YYYY-MM.")]


class CostIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: float = Field(
        ge=0,
        le=float(service.MAX_AMOUNT),
        allow_inf_nan=False,
        description="Euros spent on the source in the month (0 for a free source).",
        examples=[1250.5],
    )


class CostOut(BaseModel):
    source: str
    month: str
    amount: float = Field(description="Euros, with cents.")
    updated_at: datetime

    @classmethod
    def of(cls, entry: CostEntry) -> CostOut:
        return cls(
            source=entry.source,
            month=entry.month,
            amount=entry.amount,
            updated_at=entry.updated_at,
        )


class CostList(BaseModel):
    items: list[CostOut]


@router.put(
    "/v1/costs/{source}/{month}",
    response_model=CostOut,
    summary="Set what a source cost in a month",
    responses=problem_responses(400, 401, 403, 413, 422, 503),
)
def put_cost(
    _principal: LeadsWriter,
    session_factory: SessionFactoryDep,
    source: SourcePath,
    month: MonthPath,
    body: CostIn,
) -> CostOut:
    """Replaces the amount entered before for the same source and month."""
    return CostOut.of(service.put_cost(session_factory, source, month, body.amount))


@router.delete(
    "/v1/costs/{source}/{month}",
    status_code=204,
    summary="Remove a cost entry",
    responses=problem_responses(401, 403, 404, 422, 503),
)
def delete_cost(
    _principal: LeadsWriter,
    session_factory: SessionFactoryDep,
    source: SourcePath,
    month: MonthPath,
) -> Response:
    service.delete_cost(session_factory, source, month)
    return Response(status_code=204)


@router.get(
    "/v1/costs",
    response_model=CostList,
    summary="The entered costs",
    responses=problem_responses(401, 403, 422),
)
def list_costs(
    _principal: LeadsReader,
    session: ReadSessionDep,
    source: Annotated[str | None, Query(pattern=SOURCE_PATTERN, max_length=100)] = None,
    from_month: MonthQuery = None,
    to_month: MonthQuery = None,
) -> CostList:
    """By month, then source."""
    entries = service.list_costs(
        session, source=source, first_month=from_month, last_month=to_month
    )
    return CostList(items=[CostOut.of(entry) for entry in entries])


@router.post(
    "/v1/costs/import",
    response_model=CostList,
    summary="Import costs from a CSV file",
    responses=problem_responses(400, 401, 403, 413, 415, 422, 503),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {
                    "schema": {"type": "string"},
                    "example": "source;month;amount\npaid_search;2026-10;1.250,50\n",
                }
            },
        }
    },
)
async def import_costs(
    _principal: LeadsWriter, session_factory: SessionFactoryDep, request: Request
) -> CostList:
    """Columns `source`, `month`, `amount` (or `fonte`, `mese`, `costo`), `,` or `;` separated.

    All or nothing: one bad row refuses the file, naming each bad row and column.
    """
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in ("text/csv", "text/plain", "application/csv"):
        raise UnsupportedMediaType("send the costs as text/csv")
    data = await request.body()
    entries = await run_in_threadpool(service.import_csv, session_factory, data)
    return CostList(items=[CostOut.of(entry) for entry in entries])
