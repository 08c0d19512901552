"""``/v1/subscriptions`` (scope ``webhooks:admin``): who receives outbound webhooks.

Create (the ``whsec_`` secret is in this answer only), list, show, update, delete,
enable/disable, rotate the secret (the old one keeps signing for an overlap period), send a
test ping. URLs are checked by the SSRF guard (a 422 naming ``url``) and again at each send.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field, field_validator

from leadscore_api.api.deliveries import MessageOut
from leadscore_api.api.deps import ReadSessionDep, RequireScope, SessionFactoryDep, SettingsDep
from leadscore_api.api.problems import problem_responses
from leadscore_api.api.validators import one_or_many
from leadscore_api.service import delivery as service
from leadscore_api.storage.delivery_models import Subscription

MAX_OVERLAP_SECONDS = 7 * 86400

EventType = Literal[
    "lead.mql",
    "lead.sql",
    "lead.stage_changed",
    "lead.tier_changed",
    "lead.letter_changed",
    "lead.sla_breached",
    "lead.requalify_due",
    "lead.followup_due",
    "*",
]
Letter = Literal["A", "B", "C", "D"]

router = APIRouter(
    dependencies=[Depends(RequireScope("webhooks:admin"))],
    responses=problem_responses(401, 403, 422, 503),
    tags=["webhooks"],
)
SubId = Annotated[str, Path(max_length=40)]


class SubscriptionFilters(BaseModel):
    """Only transitions of leads matching every given filter are sent."""

    model_config = ConfigDict(extra="forbid")

    ruleset: str | None = Field(default=None, max_length=100, description="Ruleset name.")
    letter: list[Letter] | None = Field(default=None, description="Current letter(s).")
    tier: list[Annotated[str, Field(min_length=1, max_length=40)]] | None = Field(
        default=None, description="Current tier(s), e.g. hot."
    )

    _letters = field_validator("letter", "tier", mode="before")(one_or_many)

    def stored(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class SubscriptionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048, examples=["https://crm.example.com/hooks/leadscore"])
    event_types: list[EventType] = Field(min_length=1, examples=[["lead.mql", "lead.sql"]])
    filters: SubscriptionFilters = Field(default_factory=SubscriptionFilters)
    description: str | None = Field(default=None, max_length=500)
    enabled: bool = True


class SubscriptionUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, max_length=2048)
    event_types: list[EventType] | None = Field(default=None, min_length=1)
    filters: SubscriptionFilters | None = None
    description: str | None = Field(default=None, max_length=500)
    enabled: bool | None = None


class SubscriptionOut(BaseModel):
    id: str
    url: str
    event_types: list[str]
    filters: dict[str, Any]
    description: str | None
    enabled: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    failing_since: datetime | None
    previous_secret_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, sub: Subscription) -> SubscriptionOut:
        return cls(
            id=sub.id,
            url=sub.url,
            event_types=list(sub.event_types),
            filters=dict(sub.filters or {}),
            description=sub.description,
            enabled=sub.enabled,
            disabled_reason=sub.disabled_reason,
            disabled_at=sub.disabled_at,
            failing_since=sub.failing_since,
            previous_secret_expires_at=sub.previous_secret_expires_at,
            created_at=sub.created_at,
            updated_at=sub.updated_at,
        )


class SubscriptionCreated(SubscriptionOut):
    secret: str = Field(description="The signing secret: shown in this answer only.")


class SubscriptionList(BaseModel):
    items: list[SubscriptionOut]


class RotateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overlap_seconds: int = Field(
        default=86400,
        ge=0,
        le=MAX_OVERLAP_SECONDS,
        description="How long the old secret keeps signing too (both signatures are sent).",
    )


class RotateOut(BaseModel):
    secret: str
    previous_secret_expires_at: datetime | None


@router.post(
    "/v1/subscriptions", status_code=status.HTTP_201_CREATED, response_model=SubscriptionCreated
)
def create_subscription(
    body: SubscriptionCreate, settings: SettingsDep, session_factory: SessionFactoryDep
) -> SubscriptionCreated:
    """Create a subscription; the answer carries its signing secret, shown this once."""
    sub = service.create_subscription(
        session_factory,
        url=body.url,
        event_types=list(body.event_types),
        filters=body.filters.stored(),
        description=body.description,
        enabled=body.enabled,
        allow_private=settings.webhook_allow_private_targets,
    )
    return SubscriptionCreated(**SubscriptionOut.of(sub).model_dump(), secret=sub.secret)


@router.get("/v1/subscriptions", response_model=SubscriptionList)
def list_subscriptions(
    session: ReadSessionDep, enabled: Annotated[bool | None, Query()] = None
) -> SubscriptionList:
    subs = service.list_subscriptions(session, enabled)
    return SubscriptionList(items=[SubscriptionOut.of(s) for s in subs])


@router.get(
    "/v1/subscriptions/{subscription_id}",
    response_model=SubscriptionOut,
    responses=problem_responses(404),
)
def show_subscription(subscription_id: SubId, session: ReadSessionDep) -> SubscriptionOut:
    return SubscriptionOut.of(service.get_subscription(session, subscription_id))


@router.patch(
    "/v1/subscriptions/{subscription_id}",
    response_model=SubscriptionOut,
    responses=problem_responses(404),
)
def update_subscription(
    subscription_id: SubId,
    body: SubscriptionUpdate,
    settings: SettingsDep,
    session_factory: SessionFactoryDep,
) -> SubscriptionOut:
    """Change the URL, types, filters, description or enabled flag (omitted fields stay)."""
    changes = service.SubscriptionChanges(
        url=body.url,
        event_types=list(body.event_types) if body.event_types is not None else None,
        filters=body.filters.stored() if body.filters is not None else None,
        description=body.description,
        set_description="description" in body.model_fields_set,
        enabled=body.enabled,
    )
    sub = service.update_subscription(
        session_factory,
        subscription_id,
        changes,
        allow_private=settings.webhook_allow_private_targets,
    )
    return SubscriptionOut.of(sub)


@router.delete(
    "/v1/subscriptions/{subscription_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(404),
)
def delete_subscription(subscription_id: SubId, session_factory: SessionFactoryDep) -> Response:
    """Delete the subscription with its messages and their attempts."""
    service.delete_subscription(session_factory, subscription_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/v1/subscriptions/{subscription_id}/enable",
    response_model=SubscriptionOut,
    responses=problem_responses(404),
)
def enable_subscription(
    subscription_id: SubId, session_factory: SessionFactoryDep
) -> SubscriptionOut:
    """Enable again (also after the worker disabled it); its pending messages go out."""
    return SubscriptionOut.of(service.set_enabled(session_factory, subscription_id, True))


@router.post(
    "/v1/subscriptions/{subscription_id}/disable",
    response_model=SubscriptionOut,
    responses=problem_responses(404),
)
def disable_subscription(
    subscription_id: SubId, session_factory: SessionFactoryDep
) -> SubscriptionOut:
    """Stop sending; new transitions are not queued for it and pending ones wait."""
    return SubscriptionOut.of(service.set_enabled(session_factory, subscription_id, False))


@router.post(
    "/v1/subscriptions/{subscription_id}/rotate-secret",
    response_model=RotateOut,
    responses=problem_responses(404),
)
def rotate_secret(
    subscription_id: SubId, session_factory: SessionFactoryDep, body: RotateRequest | None = None
) -> RotateOut:
    """A new secret (shown once); the old one also signs for ``overlap_seconds``."""
    overlap = (body or RotateRequest()).overlap_seconds
    sub = service.rotate_secret(session_factory, subscription_id, overlap)
    return RotateOut(secret=sub.secret, previous_secret_expires_at=sub.previous_secret_expires_at)


@router.post(
    "/v1/subscriptions/{subscription_id}/test",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=MessageOut,
    responses=problem_responses(404, 409),
)
def send_test(subscription_id: SubId, session_factory: SessionFactoryDep) -> MessageOut:
    """Queue a ``webhook.ping`` message; follow it at ``/v1/deliveries/{id}``."""
    return MessageOut.of(service.send_ping(session_factory, subscription_id))
