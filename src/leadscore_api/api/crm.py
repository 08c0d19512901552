"""``/v1/crm``: CRM connectors (scope ``crm:admin``) and the URL each CRM notifies.

* ``/v1/crm/connectors``: create, list, show, update, delete. Credentials are never returned,
  only masked (``****abcd``). The base URL passes the SSRF guard (a 422 naming ``base_url``).
* ``POST /v1/crm/connectors/{name}/setup``: create the field map's custom fields in the CRM;
  answers what was created, what existed, and what a person must click.
* ``POST /v1/crm/{name}/pull``: pull the CRM's recent changes now (else every
  ``LEADSCORE_CRM_PULL_SECONDS``).
* ``POST /v1/crm/{name}/notifications``: what the CRM calls on a change. No API key: a CRM
  cannot send one; the connector checks the CRM's own signature, token or credentials (401
  when they do not hold) and the answer is what that CRM expects (Salesforce: a SOAP Ack).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from leadscore_api.api.deps import (
    ReadSessionDep,
    RegistryDep,
    RequireScope,
    SessionFactoryDep,
    SettingsDep,
)
from leadscore_api.api.problems import problem_responses
from leadscore_api.crm.base import InboundRequest
from leadscore_api.crm.registry import ConnectorSpec, mask
from leadscore_api.service import crm as service
from leadscore_api.storage.crm_models import CrmConnector

router = APIRouter(tags=["crm"])
admin = [Depends(RequireScope("crm:admin"))]
Name = Annotated[str, Path(max_length=64)]


class ConnectorOut(BaseModel):
    name: str
    kind: str
    base_url: str
    credentials: dict[str, str] = Field(description="Masked: the secrets are never returned.")
    field_map: dict[str, str]
    owner_map: dict[str, str]
    create_missing: bool
    options: dict[str, Any]
    enabled: bool
    subscription_id: str = Field(
        description="Its outbox target: GET /v1/deliveries?subscription_id=... lists its messages."
    )
    notification_path: str = Field(description="Where the CRM's notifications go.")
    pull_cursor: datetime | None
    last_pull_at: datetime | None
    last_pull_error: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: CrmConnector) -> ConnectorOut:
        return cls(
            name=row.name,
            kind=row.kind,
            base_url=row.base_url,
            credentials=mask(row.credentials or {}),
            field_map=dict(row.field_map or {}),
            owner_map=dict(row.owner_map or {}),
            create_missing=row.create_missing,
            options=dict(row.options or {}),
            enabled=row.enabled,
            subscription_id=row.subscription_id,
            notification_path=f"/v1/crm/{row.name}/notifications",
            pull_cursor=row.pull_cursor,
            last_pull_at=row.last_pull_at,
            last_pull_error=row.last_pull_error,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


class ConnectorList(BaseModel):
    items: list[ConnectorOut]


class ConnectorPatch(BaseModel):
    """Omitted fields stay; ``credentials`` given are merged into the stored ones."""

    model_config = ConfigDict(extra="forbid")

    base_url: str | None = Field(default=None, max_length=2048)
    credentials: dict[str, str] | None = None
    field_map: dict[str, str] | None = None
    owner_map: dict[str, str] | None = None
    create_missing: bool | None = None
    options: dict[str, Any] | None = None
    enabled: bool | None = None


class SetupOut(BaseModel):
    created: list[str]
    existing: list[str]
    manual_steps: list[str]


class PullOut(BaseModel):
    name: str
    pulled: bool = Field(description="False when another replica is pulling this connector.")
    accepted: int
    duplicate: int
    rejected: int
    unknown_person: int = Field(description="Outcomes about people we do not score: skipped.")
    cursor: datetime | None
    error: str | None


@router.post(
    "/v1/crm/connectors",
    status_code=status.HTTP_201_CREATED,
    response_model=ConnectorOut,
    dependencies=admin,
    summary="Configure a CRM connector",
    responses=problem_responses(401, 403, 409, 422, 503),
)
def create_connector(
    body: ConnectorSpec, settings: SettingsDep, session_factory: SessionFactoryDep
) -> ConnectorOut:
    """Store the connector; scores start flowing to the CRM with the next change of a lead
    (``leadscore crm connect`` also back-fills every lead and runs the setup)."""
    row = service.create_connector(
        session_factory, body, allow_private=settings.webhook_allow_private_targets
    )
    return ConnectorOut.of(row)


@router.get(
    "/v1/crm/connectors",
    response_model=ConnectorList,
    dependencies=admin,
    responses=problem_responses(401, 403, 503),
)
def list_connectors(session: ReadSessionDep) -> ConnectorList:
    return ConnectorList(items=[ConnectorOut.of(r) for r in service.list_connectors(session)])


@router.get(
    "/v1/crm/connectors/{name}",
    response_model=ConnectorOut,
    dependencies=admin,
    responses=problem_responses(401, 403, 404, 503),
)
def show_connector(name: Name, session: ReadSessionDep) -> ConnectorOut:
    return ConnectorOut.of(service.get_connector(session, name))


@router.patch(
    "/v1/crm/connectors/{name}",
    response_model=ConnectorOut,
    dependencies=admin,
    responses=problem_responses(401, 403, 404, 422, 503),
)
def update_connector(
    name: Name, body: ConnectorPatch, settings: SettingsDep, session_factory: SessionFactoryDep
) -> ConnectorOut:
    changes = {key: getattr(body, key) for key in body.model_fields_set}
    changes = {key: value for key, value in changes.items() if value is not None}
    row = service.update_connector(
        session_factory, name, changes, allow_private=settings.webhook_allow_private_targets
    )
    return ConnectorOut.of(row)


@router.delete(
    "/v1/crm/connectors/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=admin,
    responses=problem_responses(401, 403, 404, 503),
)
def delete_connector(name: Name, session_factory: SessionFactoryDep) -> Response:
    """The connector, its record ids and its queued messages; nothing is deleted in the CRM."""
    service.delete_connector(session_factory, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/v1/crm/connectors/{name}/setup",
    response_model=SetupOut,
    dependencies=admin,
    summary="Create the connector's custom fields in the CRM",
    responses=problem_responses(401, 403, 404, 502, 503),
)
async def setup_connector(
    name: Name, settings: SettingsDep, session_factory: SessionFactoryDep
) -> SetupOut:
    report = await service.run_setup(session_factory, name, settings)
    return SetupOut(
        created=list(report.created),
        existing=list(report.existing),
        manual_steps=list(report.manual_steps),
    )


@router.post(
    "/v1/crm/{name}/pull",
    response_model=PullOut,
    dependencies=admin,
    summary="Pull the CRM's recent changes now",
    responses=problem_responses(401, 403, 404, 503),
)
async def pull_connector(
    name: Name, settings: SettingsDep, registry: RegistryDep, session_factory: SessionFactoryDep
) -> PullOut:
    result = await service.pull_connector(
        session_factory, registry, settings, name, owner=service.pull_owner()
    )
    return PullOut(
        name=result.name,
        pulled=result.pulled,
        accepted=result.counts.accepted,
        duplicate=result.counts.duplicate,
        rejected=result.counts.rejected,
        unknown_person=result.counts.unknown_person,
        cursor=result.cursor,
        error=result.error,
    )


@router.post(
    "/v1/crm/{name}/notifications",
    summary="A CRM's change notification (authenticated the CRM's way, no API key)",
    response_class=Response,
    responses={
        200: {"description": "The connector's acknowledgement, in the CRM's format."},
        **problem_responses(401, 404, 413, 502, 503),
    },
)
async def receive_notification(
    name: Name,
    request: Request,
    settings: SettingsDep,
    registry: RegistryDep,
    session_factory: SessionFactoryDep,
) -> Response:
    inbound = InboundRequest(
        method=request.method,
        url=str(request.url),
        headers={k.lower(): v for k, v in request.headers.items()},
        body=await request.body(),
    )
    ack, _ = await service.receive_notification(session_factory, registry, settings, name, inbound)
    return Response(content=ack.body, status_code=ack.status, media_type=ack.media_type)
