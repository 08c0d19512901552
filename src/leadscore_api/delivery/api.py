"""Subscriptions and deliveries endpoints (scope ``webhooks:admin``).

- ``/v1/subscriptions``: create (the ``whsec_`` secret is in this answer only), list, show,
  update, delete, enable/disable, rotate the secret (the old one keeps signing for an overlap
  period), send a test ping.
- ``/v1/deliveries``: list messages by subscription, status, type, lead and time; show one with
  every attempt; retry one now; replay every message of a time range.

URLs are checked by the SSRF guard here (a clear 422 naming ``url``) and again at each send.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.api.deps import ReadSessionDep, RequireScope
from leadscore_api.api.problems import Problem, problem_responses
from leadscore_api.delivery import outbox
from leadscore_api.delivery.models import (
    STATUS_DELIVERED,
    STATUS_FAILED,
    STATUS_PENDING,
    DeliveryAttempt,
    OutboxMessage,
    Subscription,
    new_id,
)
from leadscore_api.delivery.signer import generate_secret
from leadscore_api.delivery.ssrf import UnsafeTargetError, validate_url
from leadscore_api.storage.base import utcnow

SCOPE = "webhooks:admin"
MAX_OVERLAP_SECONDS = 7 * 86400

EventType = Literal[
    "lead.mql",
    "lead.sql",
    "lead.stage_changed",
    "lead.tier_changed",
    "lead.letter_changed",
    "lead.sla_breached",
    "lead.requalify_due",
    "*",
]
Letter = Literal["A", "B", "C", "D"]
MessageStatus = Literal["pending", "delivered", "failed"]


def _session(request: Request) -> Iterator[Session]:
    """A session for writes (on SQLite its transaction takes the write lock)."""
    factory: sessionmaker[Session] = request.app.state.session_factory
    with factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(_session)]

router = APIRouter(
    dependencies=[Depends(RequireScope(SCOPE))],
    responses=problem_responses(401, 403, 422),
)


# -- models ----------------------------------------------------------------------------------


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class SubscriptionFilters(BaseModel):
    """Only transitions of leads matching every given filter are sent."""

    model_config = ConfigDict(extra="forbid")

    ruleset: str | None = Field(default=None, max_length=100, description="Ruleset name.")
    letter: list[Letter] | None = Field(default=None, description="Current letter(s).")
    tier: list[Annotated[str, Field(min_length=1, max_length=40)]] | None = Field(
        default=None, description="Current tier(s), e.g. hot."
    )

    _letters = field_validator("letter", "tier", mode="before")(_as_list)


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


class MessageOut(BaseModel):
    id: str = Field(description="The webhook-id header: the same on every attempt.")
    subscription_id: str
    type: str
    lead_id: str | None
    event_id: str | None
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime
    payload: dict[str, Any]


class AttemptOut(BaseModel):
    id: int
    attempted_at: datetime
    duration_ms: float
    status_code: int | None
    success: bool
    error: str | None
    response_body: str | None


class MessageDetail(MessageOut):
    attempt_log: list[AttemptOut]


class MessageList(BaseModel):
    items: list[MessageOut]
    next_cursor: str | None


class AttemptList(BaseModel):
    items: list[AttemptOut]


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: AwareDatetime = Field(description="Messages created at or after this time.")
    until: AwareDatetime | None = Field(default=None, description="And before this time.")
    subscription_id: str | None = None
    status: list[MessageStatus] | None = Field(
        default=None, description="Only messages in these states (default: all)."
    )

    _status = field_validator("status", mode="before")(_as_list)


class ReplayOut(BaseModel):
    replayed: int
    disabled_subscriptions: list[str] = Field(
        description="Subscriptions that hold replayed messages but are disabled: enable them."
    )


# -- helpers ---------------------------------------------------------------------------------


def _checked_url(request: Request, url: str) -> str:
    try:
        return validate_url(
            url, allow_private=request.app.state.settings.webhook_allow_private_targets
        )
    except UnsafeTargetError as exc:
        raise Problem(
            422,
            f"url: {exc}",
            slug="unsafe-webhook-target",
            title="Webhook URL refused",
            errors=[{"field": "url", "message": str(exc)}],
        ) from exc


def _filters(filters: SubscriptionFilters) -> dict[str, Any]:
    return filters.model_dump(exclude_none=True)


def _sub_out(sub: Subscription) -> SubscriptionOut:
    return SubscriptionOut(
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


def _msg_out(message: OutboxMessage) -> MessageOut:
    return MessageOut(
        id=message.id,
        subscription_id=message.subscription_id,
        type=message.event_type,
        lead_id=message.lead_id,
        event_id=message.event_id,
        status=message.status,
        attempts=message.attempts,
        next_attempt_at=message.next_attempt_at,
        last_status=message.last_status,
        last_error=message.last_error,
        last_attempt_at=message.last_attempt_at,
        delivered_at=message.delivered_at,
        created_at=message.created_at,
        payload=message.payload,
    )


def _attempt_out(attempt: DeliveryAttempt) -> AttemptOut:
    return AttemptOut(
        id=attempt.id,
        attempted_at=attempt.attempted_at,
        duration_ms=attempt.duration_ms,
        status_code=attempt.status_code,
        success=attempt.success,
        error=attempt.error,
        response_body=attempt.response_body,
    )


def _get_sub(session: Session, subscription_id: str) -> Subscription:
    sub = session.get(Subscription, subscription_id)
    if sub is None:
        raise Problem(404, f"no subscription {subscription_id!r}", slug="not-found")
    return sub


def _get_message(session: Session, message_id: str) -> OutboxMessage:
    message = session.get(OutboxMessage, message_id)
    if message is None:
        raise Problem(404, f"no delivery {message_id!r}", slug="not-found")
    return message


def _enable(sub: Subscription) -> None:
    sub.enabled = True
    sub.disabled_reason = None
    sub.disabled_at = None
    sub.failing_since = None


def _disable(sub: Subscription) -> None:
    if sub.enabled:
        sub.enabled = False
        sub.disabled_reason = "disabled through the API"
        sub.disabled_at = utcnow()


SubId = Annotated[str, Path(max_length=40)]
MsgId = Annotated[str, Path(max_length=40)]


# -- subscriptions ---------------------------------------------------------------------------


@router.post(
    "/v1/subscriptions",
    status_code=status.HTTP_201_CREATED,
    response_model=SubscriptionCreated,
    tags=["webhooks"],
)
def create_subscription(
    body: SubscriptionCreate, request: Request, session: SessionDep
) -> SubscriptionCreated:
    """Create a subscription; the answer carries its signing secret, shown this once."""
    url = _checked_url(request, body.url)
    now = utcnow()
    sub = Subscription(
        id=new_id("sub"),
        url=url,
        event_types=sorted(set(body.event_types)),
        filters=_filters(body.filters),
        description=body.description,
        secret=generate_secret(),
        enabled=body.enabled,
        disabled_reason=None if body.enabled else "created disabled",
        disabled_at=None if body.enabled else now,
        created_at=now,
        updated_at=now,
    )
    session.add(sub)
    session.commit()
    return SubscriptionCreated(**_sub_out(sub).model_dump(), secret=sub.secret)


@router.get("/v1/subscriptions", response_model=SubscriptionList, tags=["webhooks"])
def list_subscriptions(
    session: ReadSessionDep, enabled: Annotated[bool | None, Query()] = None
) -> SubscriptionList:
    query = select(Subscription).order_by(Subscription.created_at, Subscription.id)
    if enabled is not None:
        query = query.where(Subscription.enabled.is_(enabled))
    return SubscriptionList(items=[_sub_out(s) for s in session.scalars(query)])


@router.get(
    "/v1/subscriptions/{subscription_id}",
    response_model=SubscriptionOut,
    responses=problem_responses(404),
    tags=["webhooks"],
)
def show_subscription(subscription_id: SubId, session: ReadSessionDep) -> SubscriptionOut:
    return _sub_out(_get_sub(session, subscription_id))


@router.patch(
    "/v1/subscriptions/{subscription_id}",
    response_model=SubscriptionOut,
    responses=problem_responses(404),
    tags=["webhooks"],
)
def update_subscription(
    subscription_id: SubId, body: SubscriptionUpdate, request: Request, session: SessionDep
) -> SubscriptionOut:
    """Change the URL, types, filters, description or enabled flag (omitted fields stay)."""
    sub = _get_sub(session, subscription_id)
    if body.url is not None:
        sub.url = _checked_url(request, body.url)
    if body.event_types is not None:
        sub.event_types = sorted(set(body.event_types))
    if body.filters is not None:
        sub.filters = _filters(body.filters)
    if "description" in body.model_fields_set:
        sub.description = body.description
    if body.enabled is True:
        _enable(sub)
    elif body.enabled is False:
        _disable(sub)
    sub.updated_at = utcnow()
    session.commit()
    return _sub_out(sub)


@router.delete(
    "/v1/subscriptions/{subscription_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(404),
    tags=["webhooks"],
)
def delete_subscription(subscription_id: SubId, session: SessionDep) -> Response:
    """Delete the subscription with its messages and their attempts."""
    sub = _get_sub(session, subscription_id)
    session.delete(sub)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/v1/subscriptions/{subscription_id}/enable",
    response_model=SubscriptionOut,
    responses=problem_responses(404),
    tags=["webhooks"],
)
def enable_subscription(subscription_id: SubId, session: SessionDep) -> SubscriptionOut:
    """Enable again (also after the worker disabled it); its pending messages go out."""
    sub = _get_sub(session, subscription_id)
    _enable(sub)
    sub.updated_at = utcnow()
    session.commit()
    return _sub_out(sub)


@router.post(
    "/v1/subscriptions/{subscription_id}/disable",
    response_model=SubscriptionOut,
    responses=problem_responses(404),
    tags=["webhooks"],
)
def disable_subscription(subscription_id: SubId, session: SessionDep) -> SubscriptionOut:
    """Stop sending; new transitions are not queued for it and pending ones wait."""
    sub = _get_sub(session, subscription_id)
    _disable(sub)
    sub.updated_at = utcnow()
    session.commit()
    return _sub_out(sub)


@router.post(
    "/v1/subscriptions/{subscription_id}/rotate-secret",
    response_model=RotateOut,
    responses=problem_responses(404),
    tags=["webhooks"],
)
def rotate_secret(
    subscription_id: SubId, session: SessionDep, body: RotateRequest | None = None
) -> RotateOut:
    """A new secret (shown once); the old one also signs for ``overlap_seconds``."""
    sub = _get_sub(session, subscription_id)
    overlap = (body or RotateRequest()).overlap_seconds
    now = utcnow()
    if overlap > 0:
        sub.previous_secret = sub.secret
        sub.previous_secret_expires_at = now + timedelta(seconds=overlap)
    else:
        sub.previous_secret = None
        sub.previous_secret_expires_at = None
    sub.secret = generate_secret()
    sub.updated_at = now
    session.commit()
    return RotateOut(secret=sub.secret, previous_secret_expires_at=sub.previous_secret_expires_at)


@router.post(
    "/v1/subscriptions/{subscription_id}/test",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=MessageOut,
    responses=problem_responses(404, 409),
    tags=["webhooks"],
)
def send_test(subscription_id: SubId, session: SessionDep) -> MessageOut:
    """Queue a ``webhook.ping`` message; follow it at ``/v1/deliveries/{id}``."""
    sub = _get_sub(session, subscription_id)
    if not sub.enabled:
        raise Problem(409, "the subscription is disabled; enable it first", slug="disabled")
    message = outbox.enqueue_ping(session, sub)
    session.commit()
    return _msg_out(message)


# -- deliveries ------------------------------------------------------------------------------


@router.get("/v1/deliveries", response_model=MessageList, tags=["webhooks"])
def list_deliveries(
    session: ReadSessionDep,
    subscription_id: Annotated[str | None, Query(max_length=40)] = None,
    status_: Annotated[MessageStatus | None, Query(alias="status")] = None,
    type_: Annotated[str | None, Query(alias="type", max_length=64)] = None,
    lead_id: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[AwareDatetime | None, Query()] = None,
    until: Annotated[AwareDatetime | None, Query()] = None,
    cursor: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> MessageList:
    """Newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    query = select(OutboxMessage).order_by(OutboxMessage.id.desc()).limit(limit + 1)
    if subscription_id is not None:
        query = query.where(OutboxMessage.subscription_id == subscription_id)
    if status_ is not None:
        query = query.where(OutboxMessage.status == status_)
    if type_ is not None:
        query = query.where(OutboxMessage.event_type == type_)
    if lead_id is not None:
        query = query.where(OutboxMessage.lead_id == lead_id)
    if since is not None:
        query = query.where(OutboxMessage.created_at >= since)
    if until is not None:
        query = query.where(OutboxMessage.created_at < until)
    if cursor is not None:
        query = query.where(OutboxMessage.id < cursor)
    rows = list(session.scalars(query))
    next_cursor = rows[limit - 1].id if len(rows) > limit else None
    return MessageList(items=[_msg_out(m) for m in rows[:limit]], next_cursor=next_cursor)


def _attempts(session: Session, message_id: str) -> list[AttemptOut]:
    query = (
        select(DeliveryAttempt)
        .where(DeliveryAttempt.message_id == message_id)
        .order_by(DeliveryAttempt.id)
    )
    return [_attempt_out(a) for a in session.scalars(query)]


@router.get(
    "/v1/deliveries/{message_id}",
    response_model=MessageDetail,
    responses=problem_responses(404),
    tags=["webhooks"],
)
def show_delivery(message_id: MsgId, session: ReadSessionDep) -> MessageDetail:
    message = _get_message(session, message_id)
    return MessageDetail(
        **_msg_out(message).model_dump(), attempt_log=_attempts(session, message_id)
    )


@router.get(
    "/v1/deliveries/{message_id}/attempts",
    response_model=AttemptList,
    responses=problem_responses(404),
    tags=["webhooks"],
)
def list_attempts(message_id: MsgId, session: ReadSessionDep) -> AttemptList:
    _get_message(session, message_id)
    return AttemptList(items=_attempts(session, message_id))


def _requeue_values(now: datetime) -> dict[str, Any]:
    return {
        "status": STATUS_PENDING,
        "next_attempt_at": now,
        "claim_token": None,
        "schedule_attempts": 0,
    }


@router.post(
    "/v1/deliveries/{message_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=MessageOut,
    responses=problem_responses(404, 409),
    tags=["webhooks"],
)
def retry_delivery(message_id: MsgId, session: SessionDep) -> MessageOut:
    """Send this message again now, with the same ``webhook-id`` and a fresh schedule."""
    message = _get_message(session, message_id)
    sub = _get_sub(session, message.subscription_id)
    if not sub.enabled:
        raise Problem(
            409,
            f"subscription {sub.id} is disabled ({sub.disabled_reason}); enable it first",
            slug="disabled",
        )
    for name, value in _requeue_values(utcnow()).items():
        setattr(message, name, value)
    outbox.wake_after_commit(session)
    session.commit()
    return _msg_out(message)


@router.post(
    "/v1/deliveries/replay",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ReplayOut,
    tags=["webhooks"],
)
def replay_deliveries(body: ReplayRequest, session: SessionDep) -> ReplayOut:
    """Send again every message created in ``[since, until)`` (e.g. after a receiver outage).

    Delivered and failed messages start a fresh schedule; pending ones become due now. Each
    keeps its ``webhook-id``, so a receiver that did get one can drop the copy.
    """
    if body.until is not None and body.until <= body.since:
        raise Problem(
            422,
            "until: must be after since",
            slug="validation",
            errors=[{"field": "until", "message": "must be after since"}],
        )
    conditions = [OutboxMessage.created_at >= body.since]
    if body.until is not None:
        conditions.append(OutboxMessage.created_at < body.until)
    if body.subscription_id is not None:
        _get_sub(session, body.subscription_id)
        conditions.append(OutboxMessage.subscription_id == body.subscription_id)
    statuses: list[str] = list(body.status or (STATUS_PENDING, STATUS_DELIVERED, STATUS_FAILED))
    conditions.append(OutboxMessage.status.in_(statuses))
    disabled = list(
        session.scalars(
            select(Subscription.id)
            .where(Subscription.enabled.is_(False))
            .where(Subscription.id.in_(select(OutboxMessage.subscription_id).where(*conditions)))
        )
    )
    result = session.execute(
        update(OutboxMessage)
        .where(*conditions)
        .values(**_requeue_values(utcnow()))
        .execution_options(synchronize_session=False)
    )
    count = int(getattr(result, "rowcount", 0) or 0)
    if count:
        outbox.wake_after_commit(session)
    session.commit()
    return ReplayOut(replayed=count, disabled_subscriptions=sorted(disabled))


__all__ = ["router"]
