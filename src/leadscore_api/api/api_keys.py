"""``/v1/api-keys``: create (shown once), list (never the secret), revoke."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from leadscore_api.api.deps import KeyCacheDep, KeysAdmin, ReadSessionDep, SessionFactoryDep
from leadscore_api.api.problems import problem_responses
from leadscore_api.service import api_keys as service
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

    @classmethod
    def of(cls, row: ApiKey) -> ApiKeyOut:
        return cls(
            id=row.id,
            name=row.name,
            prefix=service.public_prefix(row),
            scopes=list(row.scopes),
            created_at=row.created_at,
            revoked_at=row.revoked_at,
        )


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The key itself. Shown only now: store it safely.")


class ApiKeyList(BaseModel):
    items: list[ApiKeyOut]


@router.post(
    "/v1/api-keys",
    status_code=201,
    response_model=ApiKeyCreated,
    summary="Create an API key",
    responses=problem_responses(401, 403, 422, 503),
)
def create_api_key(
    _principal: KeysAdmin, session_factory: SessionFactoryDep, body: ApiKeyCreate
) -> ApiKeyCreated:
    row, key = service.create_key(session_factory, body.name, body.scopes)
    return ApiKeyCreated(**ApiKeyOut.of(row).model_dump(), key=key)


@router.get(
    "/v1/api-keys",
    response_model=ApiKeyList,
    summary="List API keys (never their secrets)",
    responses=problem_responses(401, 403),
)
def list_api_keys(_principal: KeysAdmin, session: ReadSessionDep) -> ApiKeyList:
    return ApiKeyList(items=[ApiKeyOut.of(row) for row in service.list_keys(session)])


@router.delete(
    "/v1/api-keys/{key_id}",
    status_code=204,
    summary="Revoke an API key",
    responses=problem_responses(401, 403, 404, 503),
)
def revoke_api_key(
    _principal: KeysAdmin,
    session_factory: SessionFactoryDep,
    key_cache: KeyCacheDep,
    key_id: Annotated[str, Path(max_length=40)],
) -> Response:
    service.revoke_key(session_factory, key_id)
    key_cache.forget(key_id)
    return Response(status_code=204)
