"""``POST /v1/events``: one canonical event or a batch, answered per event."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from leadscore_api import json_codec
from leadscore_api.api.deps import ENDPOINT_SECURITY, RequireScope, checks_scope
from leadscore_api.api.metrics import Metrics
from leadscore_api.api.problems import problem_responses
from leadscore_api.config import Settings
from leadscore_api.errors import InvalidJson
from leadscore_api.ingest.parsing import parse_body
from leadscore_api.service.group_commit import GroupCommitter
from leadscore_api.service.ingestion import EventResult, log_results

router = APIRouter(tags=["events"])
_EVENTS_WRITE = RequireScope("events:write")


class EventResultOut(BaseModel):
    id: str | None = Field(description="The event's id (null if the item had none).")
    status: str = Field(
        description="`accepted`, `duplicate`, `rejected`, or `ignored` (not applied: an event"
        " of a person erased after it happened, see `warning`; webhooks also ignore platform"
        " events that score nothing)."
    )
    lead_id: str | None = None
    error: str | None = Field(default=None, description="Why it was rejected, naming the field.")
    unknown_type: bool = Field(
        default=False, description="The type is not one the service knows: stored, scores nothing."
    )
    warning: str | None = Field(
        default=None,
        description="Accepted, but something needs a look (e.g. identities of two leads).",
    )

    @classmethod
    def of(cls, result: EventResult) -> EventResultOut:
        return cls(
            id=result.id,
            status=result.status,
            lead_id=result.lead_id,
            error=result.error,
            unknown_type=result.unknown_type,
            warning=result.warning,
        )


class EventsOut(BaseModel):
    results: list[EventResultOut]


async def json_body(request: Request) -> Any:
    """The request body as JSON; 400 when it is not JSON (read under the body-size limit)."""
    raw = await request.body()
    if not raw.strip():
        raise InvalidJson("the request body is empty; send JSON")
    try:
        return json_codec.parse(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJson(f"the request body is not valid JSON: {exc}") from None


_BODY_SCHEMA = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "oneOf": [
                    {"$ref": "#/components/schemas/CanonicalEvent"},
                    {
                        "type": "object",
                        "title": "EventBatch",
                        "required": ["events"],
                        "additionalProperties": False,
                        "properties": {
                            "events": {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/CanonicalEvent"},
                            }
                        },
                    },
                ]
            }
        }
    },
}


@router.post(
    "/v1/events",
    response_model=EventsOut,
    summary="Ingest one event or a batch",
    openapi_extra={"requestBody": _BODY_SCHEMA, "security": ENDPOINT_SECURITY},
    responses=problem_responses(400, 401, 403, 413, 422, 503),
)
@checks_scope(_EVENTS_WRITE)
async def post_events(request: Request) -> Response:
    """Each event is stored once (its `id` is the idempotency key), scored, and recorded.

    Results come back in input order. In a batch an invalid event is `rejected` with an error
    naming the field while the others are applied; a single invalid event is a 422 problem.
    """
    # The busiest route of the service: collaborators come from app.state rather than one
    # dependency each, and the answer is encoded directly rather than validated again through
    # the response model (whose schema still documents it), which halved what the framework
    # cost per single event. The key is checked by a call rather than a dependency for the
    # same reason (``RequireScope.check``).
    await _EVENTS_WRITE.check(request)
    state = request.app.state
    settings: Settings = state.settings
    writer: GroupCommitter = state.ingest_writer
    metrics: Metrics = state.metrics
    items, _is_batch = parse_body(await json_body(request), settings.max_batch_size)
    results = await writer.submit(items)
    metrics.record_ingest(results)
    log_results(results, "api")
    return Response(
        json_codec.dumps({"results": [_result_json(result) for result in results]}),
        media_type="application/json",
    )


def _result_json(result: EventResult) -> dict[str, Any]:
    """One result as ``EventResultOut`` serialises it (a test holds the two together)."""
    return {
        "id": result.id,
        "status": result.status,
        "lead_id": result.lead_id,
        "error": result.error,
        "unknown_type": result.unknown_type,
        "warning": result.warning,
    }
