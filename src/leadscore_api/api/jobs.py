"""``/v1/jobs``: background work (re-scores) and its progress."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from leadscore_api.api.deps import ReadSessionDep, RulesAdmin, SessionFactoryDep
from leadscore_api.api.problems import problem_responses
from leadscore_api.service import jobs as service
from leadscore_api.service.jobs import JobView
from leadscore_api.storage.unit_of_work import in_transaction

router = APIRouter(tags=["jobs"])

JobId = Annotated[
    str, Path(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_]+$", description="The job's id.")
]
EmitWebhooks = Annotated[
    bool,
    Query(description="Send the transitions the re-score causes to the webhook subscriptions."),
]


class JobOut(BaseModel):
    id: str
    kind: str = Field(description="`rescore`: every lead scored again under the active rulesets.")
    status: str = Field(description="`queued`, `running`, `done`, `failed` or `cancelled`.")
    done: int = Field(description="Items finished (leads, for a re-score).")
    total: int | None = Field(description="Items to do, counted when the job was created.")
    progress: float = Field(description="`done / total`, 0 to 1.")
    cursor: str | None = Field(description="The last item finished: where a resumed job goes on.")
    params: dict[str, Any]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, view: JobView) -> JobOut:
        if view.total:
            progress = min(1.0, view.done / view.total)
        else:
            progress = 1.0 if view.status == "done" else 0.0
        return cls(
            id=view.id,
            kind=view.kind,
            status=view.status,
            done=view.done,
            total=view.total,
            progress=progress,
            cursor=view.cursor,
            params=view.params,
            error=view.error,
            created_at=view.created_at,
            started_at=view.started_at,
            updated_at=view.updated_at,
            finished_at=view.finished_at,
        )


class JobList(BaseModel):
    items: list[JobOut]


@router.post(
    "/v1/jobs/rescore",
    status_code=202,
    response_model=JobOut,
    summary="Queue a re-score of every lead under the active rulesets",
    responses=problem_responses(401, 403, 422),
)
def create_rescore(
    _principal: RulesAdmin, factory: SessionFactoryDep, emit_webhooks: EmitWebhooks = False
) -> JobOut:
    view = in_transaction(
        factory,
        lambda session: service.create_rescore(
            session, emit_webhooks=emit_webhooks, reason="requested"
        ),
    )
    return JobOut.of(view)


@router.get(
    "/v1/jobs",
    response_model=JobList,
    summary="The latest background jobs, newest first",
    responses=problem_responses(401, 403, 422),
)
def list_jobs(
    _principal: RulesAdmin,
    session: ReadSessionDep,
    limit: Annotated[int, Query(ge=1, le=500, description="Items to show.")] = 50,
) -> JobList:
    return JobList(items=[JobOut.of(view) for view in service.list_jobs(session, limit)])


@router.get(
    "/v1/jobs/{job_id}",
    response_model=JobOut,
    summary="One background job, with its progress",
    responses=problem_responses(401, 403, 404, 422),
)
def get_job(_principal: RulesAdmin, session: ReadSessionDep, job_id: JobId) -> JobOut:
    return JobOut.of(service.get_job(session, job_id))
