"""``/v1/deliveries`` (scope ``webhooks:admin``): the outbound messages and their attempts.

List messages by subscription, status, type, lead and time; show one with every attempt; retry
one now; replay every message of a time range (e.g. after a receiver's outage).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from leadscore_api.api.deps import ReadSessionDep, RequireScope, SessionFactoryDep
from leadscore_api.api.problems import problem_responses
from leadscore_api.api.validators import one_or_many
from leadscore_api.service import delivery as service
from leadscore_api.storage.delivery_models import DeliveryAttempt, OutboxMessage

MessageStatus = Literal["pending", "delivered", "failed"]

router = APIRouter(
    dependencies=[Depends(RequireScope("webhooks:admin"))],
    responses=problem_responses(401, 403, 422, 503),
    tags=["webhooks"],
)
MsgId = Annotated[str, Path(max_length=40)]


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

    @classmethod
    def of(cls, message: OutboxMessage) -> MessageOut:
        return cls(
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


class AttemptOut(BaseModel):
    id: int
    attempted_at: datetime
    duration_ms: float
    status_code: int | None
    success: bool
    error: str | None
    response_body: str | None

    @classmethod
    def of(cls, attempt: DeliveryAttempt) -> AttemptOut:
        return cls(
            id=attempt.id,
            attempted_at=attempt.attempted_at,
            duration_ms=attempt.duration_ms,
            status_code=attempt.status_code,
            success=attempt.success,
            error=attempt.error,
            response_body=attempt.response_body,
        )


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

    _status = field_validator("status", mode="before")(one_or_many)


class ReplayOut(BaseModel):
    replayed: int
    disabled_subscriptions: list[str] = Field(
        description="Subscriptions that hold replayed messages but are disabled: enable them."
    )


@router.get("/v1/deliveries", response_model=MessageList)
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
    filters = service.DeliveryFilters(
        subscription_id=subscription_id,
        status=status_,
        event_type=type_,
        lead_id=lead_id,
        since=since,
        until=until,
    )
    messages, next_cursor = service.list_messages(session, filters, cursor, limit)
    return MessageList(items=[MessageOut.of(m) for m in messages], next_cursor=next_cursor)


@router.get(
    "/v1/deliveries/{message_id}",
    response_model=MessageDetail,
    responses=problem_responses(404),
)
def show_delivery(message_id: MsgId, session: ReadSessionDep) -> MessageDetail:
    message = service.get_message(session, message_id)
    log = [AttemptOut.of(a) for a in service.attempts(session, message_id)]
    return MessageDetail(**MessageOut.of(message).model_dump(), attempt_log=log)


@router.get(
    "/v1/deliveries/{message_id}/attempts",
    response_model=AttemptList,
    responses=problem_responses(404),
)
def list_attempts(message_id: MsgId, session: ReadSessionDep) -> AttemptList:
    return AttemptList(items=[AttemptOut.of(a) for a in service.attempts(session, message_id)])


@router.post(
    "/v1/deliveries/{message_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=MessageOut,
    responses=problem_responses(404, 409),
)
def retry_delivery(message_id: MsgId, session_factory: SessionFactoryDep) -> MessageOut:
    """Send this message again now, with the same ``webhook-id`` and a fresh schedule."""
    return MessageOut.of(service.retry_message(session_factory, message_id))


@router.post(
    "/v1/deliveries/replay",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ReplayOut,
    responses=problem_responses(404),
)
def replay_deliveries(body: ReplayRequest, session_factory: SessionFactoryDep) -> ReplayOut:
    """Send again every message created in ``[since, until)`` (e.g. after a receiver outage).

    Delivered and failed messages start a fresh schedule; pending ones become due now. Each
    keeps its ``webhook-id``, so a receiver that did get one can drop the copy.
    """
    count, disabled = service.replay_messages(
        session_factory,
        since=body.since,
        until=body.until,
        subscription_id=body.subscription_id,
        statuses=body.status,
    )
    return ReplayOut(replayed=count, disabled_subscriptions=disabled)
