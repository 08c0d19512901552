"""``/v1/api-keys``: create (shown once), list (never the secret), revoke."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from leadscore_api.api.deps import KeysAdmin, ReadSessionDep, SessionFactoryDep
from leadscore_api.api.problems import Problem, problem_responses
from leadscore_api.service import api_keys as service
from leadscore_api.service.ingest import in_transaction, iso
from leadscore_api.storage.models import ApiKey

router = APIRouter(tags=["api-keys"])


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, examples=["crm-sync"])
    scopes: list[str] = Field(
        min_length=1, description="Any of: " + ", ".join(service.SCOPES), examples=[["leads:read"]]
    )


class ApiKeyOut(BaseModel):
    id: str
    name: str
    prefix: str = Field(description="The public start of the key, to recognise it.")
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The key itself. Shown only now: store it safely.")


class ApiKeyList(BaseModel):
    items: list[ApiKeyOut]


def describe_key(row: ApiKey) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "prefix": f"{service.KEY_PREFIX}_{row.id}_",
        "scopes": list(row.scopes),
        "created_at": iso(row.created_at),
        "revoked_at": iso(row.revoked_at),
    }


@router.post(
    "/v1/api-keys",
    status_code=201,
    response_model=ApiKeyCreated,
    summary="Create an API key",
    responses=problem_responses(401, 403, 422),
)
def create_api_key(
    _principal: KeysAdmin, session_factory: SessionFactoryDep, body: ApiKeyCreate
) -> dict[str, Any]:
    try:
        service.check_scopes(body.scopes)
    except service.UnknownScope as exc:
        raise Problem(
            422,
            f"scopes: {exc}",
            slug="validation",
            errors=[{"field": "scopes", "message": str(exc)}],
        ) from None

    def work(session: Session) -> dict[str, Any]:
        row, key = service.create_key(session, body.name, body.scopes)
        return {**describe_key(row), "key": key}

    return in_transaction(session_factory, work)


@router.get(
    "/v1/api-keys",
    response_model=ApiKeyList,
    summary="List API keys (never their secrets)",
    responses=problem_responses(401, 403),
)
def list_api_keys(_principal: KeysAdmin, session: ReadSessionDep) -> dict[str, Any]:
    return {"items": [describe_key(row) for row in service.list_keys(session)]}


@router.delete(
    "/v1/api-keys/{key_id}",
    status_code=204,
    summary="Revoke an API key",
    responses=problem_responses(401, 403, 404),
)
def revoke_api_key(
    _principal: KeysAdmin,
    session_factory: SessionFactoryDep,
    key_id: Annotated[str, Path(max_length=40)],
) -> Response:
    row = in_transaction(session_factory, lambda session: service.revoke_key(session, key_id))
    if row is None:
        raise Problem(404, f"no API key with id {key_id!r}", slug="api-key-not-found")
    return Response(status_code=204)
