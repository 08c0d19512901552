"""``/v1/reps`` (scope ``reps:admin``): the rep directory that routing hands leads to.

List (by team, active), create, show, update, delete (refused while the rep owns open leads),
activate, and deactivate, which hands the rep's open leads to the other reps of their team in
the same transaction. Reps listed in the directory file are overwritten by the next file sync;
see ``docs/routing.md``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field, model_validator

from leadscore_api.api.deps import ReadSessionDep, RepsAdmin, SessionFactoryDep
from leadscore_api.api.problems import problem_responses
from leadscore_api.service import reps as service
from leadscore_api.service.rep_file import (
    MAX_CAPACITY,
    MAX_EMPLOYEES,
    MAX_TAGS,
    EmailText,
    RepId,
    TeamName,
)

router = APIRouter(responses=problem_responses(401, 403, 422, 503), tags=["reps"])

RepIdPath = Annotated[str, Path(max_length=40)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Tag = Annotated[str, Field(min_length=1, max_length=100)]
Tags = Annotated[list[Tag], Field(max_length=MAX_TAGS)]
Employees = Annotated[int, Field(ge=0, le=MAX_EMPLOYEES)]
Capacity = Annotated[int, Field(ge=0, le=MAX_CAPACITY)]


def _size_range(low: int | None, high: int | None) -> None:
    if low is not None and high is not None and high < low:
        raise ValueError(f"max_employees ({high}) is below min_employees ({low})")


class RepCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    id: RepId | None = Field(
        default=None,
        description="The rep's id, stored as the owner of its leads; generated when omitted.",
        examples=["giulia.bianchi"],
    )
    name: Name = Field(examples=["Giulia Bianchi"])
    email: EmailText | None = Field(default=None, examples=["giulia.bianchi@example.it"])
    team: TeamName = Field(description="A routing rule's `owner`.", examples=["north-team"])
    industries: Tags = Field(
        default_factory=list,
        description="Expertise: the industries the rep takes; empty: any.",
        examples=[["manifatturiero", "manufacturing"]],
    )
    regions: Tags = Field(
        default_factory=list,
        description="The regions the rep covers; empty: any.",
        examples=[["Lombardia", "Piemonte"]],
    )
    min_employees: Employees = 0
    max_employees: Employees | None = Field(default=None, description="Empty: no upper bound.")
    capacity: Capacity | None = Field(
        default=None, description="Open leads the rep may own at once; empty: unlimited."
    )
    active: bool = True

    @model_validator(mode="after")
    def _range(self) -> RepCreate:
        _size_range(self.min_employees, self.max_employees)
        return self

    def fields(self) -> service.RepFields:
        return service.RepFields(
            name=self.name,
            team=self.team,
            email=self.email,
            industries=list(self.industries),
            regions=list(self.regions),
            min_employees=self.min_employees,
            max_employees=self.max_employees,
            capacity=self.capacity,
            active=self.active,
        )


class RepUpdate(BaseModel):
    """Omitted fields stay; ``null`` clears ``email``, ``max_employees`` and ``capacity``."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: Name | None = None
    email: EmailText | None = None
    team: TeamName | None = Field(
        default=None, description="Moving a rep hands its open leads to its old team."
    )
    industries: Tags | None = None
    regions: Tags | None = None
    min_employees: Employees | None = None
    max_employees: Employees | None = None
    capacity: Capacity | None = None

    @model_validator(mode="after")
    def _not_null(self) -> RepUpdate:
        for name in ("name", "team", "industries", "regions", "min_employees"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        _size_range(self.min_employees, self.max_employees)
        return self

    def changes(self) -> service.RepChanges:
        return service.RepChanges(
            given=frozenset(self.model_fields_set),
            name=self.name,
            team=self.team,
            email=self.email,
            industries=list(self.industries) if self.industries is not None else None,
            regions=list(self.regions) if self.regions is not None else None,
            min_employees=self.min_employees,
            max_employees=self.max_employees,
            capacity=self.capacity,
        )


class RepOut(BaseModel):
    id: str
    name: str
    email: str | None
    team: str
    industries: list[str]
    regions: list[str]
    min_employees: int
    max_employees: int | None
    capacity: int | None
    active: bool
    open_leads: int = Field(description="Leads it owns in stage lead, mql or sql.")
    source: str = Field(description="`file` (the directory file manages it) or `api`.")
    last_assigned_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, view: service.RepView) -> RepOut:
        rep = view.rep
        return cls(
            id=rep.id,
            name=rep.name,
            email=rep.email,
            team=rep.team,
            industries=list(rep.industries or []),
            regions=list(rep.regions or []),
            min_employees=rep.min_employees,
            max_employees=rep.max_employees,
            capacity=rep.capacity,
            active=rep.active,
            open_leads=view.open_leads,
            source=rep.source,
            last_assigned_at=rep.last_assigned_at,
            created_at=rep.created_at,
            updated_at=rep.updated_at,
        )


class RepList(BaseModel):
    items: list[RepOut]


class DeactivationOut(BaseModel):
    rep: RepOut
    moved: int = Field(description="Open leads handed to another rep of their team.")
    unassigned: int = Field(
        description="Open leads no rep could take: they keep their team and have no owner."
    )


@router.get("/v1/reps", response_model=RepList)
def list_reps(
    _principal: RepsAdmin,
    session: ReadSessionDep,
    team: Annotated[str | None, Query(max_length=200)] = None,
    active: Annotated[bool | None, Query()] = None,
) -> RepList:
    """Reps by team, then id."""
    return RepList(items=[RepOut.of(view) for view in service.list_reps(session, team, active)])


@router.post(
    "/v1/reps",
    status_code=status.HTTP_201_CREATED,
    response_model=RepOut,
    responses=problem_responses(409),
)
def create_rep(
    _principal: RepsAdmin, body: RepCreate, session_factory: SessionFactoryDep
) -> RepOut:
    """Add a rep (409 when the id is taken)."""
    return RepOut.of(service.create_rep(session_factory, body.fields(), body.id))


@router.get("/v1/reps/{rep_id}", response_model=RepOut, responses=problem_responses(404))
def show_rep(_principal: RepsAdmin, rep_id: RepIdPath, session: ReadSessionDep) -> RepOut:
    return RepOut.of(service.get_rep(session, rep_id))


@router.patch("/v1/reps/{rep_id}", response_model=RepOut, responses=problem_responses(404))
def update_rep(
    _principal: RepsAdmin,
    rep_id: RepIdPath,
    body: RepUpdate,
    session_factory: SessionFactoryDep,
) -> RepOut:
    """Change some fields; ``active`` changes through activate and deactivate."""
    return RepOut.of(service.update_rep(session_factory, rep_id, body.changes()))


@router.delete(
    "/v1/reps/{rep_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(404, 409),
)
def delete_rep(
    _principal: RepsAdmin, rep_id: RepIdPath, session_factory: SessionFactoryDep
) -> Response:
    """Delete a rep that owns no open lead (409 otherwise: deactivate it first)."""
    service.delete_rep(session_factory, rep_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/v1/reps/{rep_id}/deactivate",
    response_model=DeactivationOut,
    responses=problem_responses(404),
)
def deactivate_rep(
    _principal: RepsAdmin, rep_id: RepIdPath, session_factory: SessionFactoryDep
) -> DeactivationOut:
    """Take the rep out of routing; its open leads go to other reps of their team, at once."""
    done = service.deactivate_rep(session_factory, rep_id)
    return DeactivationOut(
        rep=RepOut.of(done.rep), moved=done.reroute.moved, unassigned=done.reroute.unassigned
    )


@router.post("/v1/reps/{rep_id}/activate", response_model=RepOut, responses=problem_responses(404))
def activate_rep(
    _principal: RepsAdmin, rep_id: RepIdPath, session_factory: SessionFactoryDep
) -> RepOut:
    """Put the rep back into routing; leads it handed over stay with their new owners."""
    return RepOut.of(service.activate_rep(session_factory, rep_id))
