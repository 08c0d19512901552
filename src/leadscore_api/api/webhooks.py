"""``/v1/webhooks/{source}``: the URL a business pastes into its email platform or form builder.

Platforms cannot send our API keys, so each request is authenticated the platform's own way
(signature, basic auth or URL token, see ``ingest/sources``). The router only reads the HTTP
request, lets the adapter check and translate it, and hands the events to the same ingestion
function as ``POST /v1/events`` (one transaction, each event stored once by id). Answers:

* 200 ``{"results": [...]}``, one per platform event in input order: ``accepted``,
  ``duplicate`` (a platform retry), ``rejected`` (with the reason) or ``ignored`` (the platform
  event describes no lead, e.g. a Mailchimp campaign notice). A batch with bad events is still a
  200: a retry would not fix them, and the good events are stored.
* 401 when the request does not prove it comes from the platform; nothing is stored.
* 400 when the body cannot be read at all (not JSON, not the platform's shape).
* 403 when the source has no secret configured; 404 for a source name we do not know.
* GET and HEAD answer 200 without authentication: Mailchimp validates a webhook URL with a GET
  and Mandrill with a HEAD before the user can configure anything.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from leadscore_api.api.deps import MetricsDep, RegistryDep, SessionFactoryDep, SettingsDep
from leadscore_api.api.events import EventResultOut
from leadscore_api.api.problems import problem_responses
from leadscore_api.api.rate_limits import RateLimits
from leadscore_api.ingest.sources import Ignored, WebhookRequest
from leadscore_api.service import webhooks as service
from leadscore_api.service.ingestion import EventResult, log_results
from leadscore_api.storage.base import utcnow

router = APIRouter(tags=["webhooks"])


class WebhookResults(BaseModel):
    results: list[EventResultOut]


class WebhookSource(BaseModel):
    source: str
    ok: bool


def _answer(item: EventResult | Ignored) -> EventResultOut:
    if isinstance(item, Ignored):
        return EventResultOut(id=item.id, status="ignored", warning=item.reason)
    return EventResultOut.of(item)


@router.post(
    "/v1/webhooks/{source}",
    response_model=WebhookResults,
    summary="Receive a platform's webhook (SendGrid, Mailgun, Mailchimp, Mandrill, ...)",
    responses=problem_responses(400, 401, 403, 404, 413, 429, 503),
)
async def receive_webhook(
    source: str,
    request: Request,
    settings: SettingsDep,
    registry: RegistryDep,
    session_factory: SessionFactoryDep,
    metrics: MetricsDep,
) -> WebhookResults:
    """The body is the platform's own payload, authenticated the platform's way.

    See docs/integrations.md for the URL and secret of each platform.
    """
    service.adapter_for(source)
    limits: RateLimits | None = getattr(request.app.state, "rate_limits", None)
    if limits is not None:
        await limits.check_source(source)
    inbound = WebhookRequest(
        method=request.method,
        url=str(request.url),
        headers=dict(request.headers),
        query=dict(request.query_params),
        body=await request.body(),
        received_at=utcnow(),
    )
    outcome = await run_in_threadpool(
        service.receive, source, inbound, settings, registry, session_factory
    )
    metrics.record_ingest(outcome.ingested, source)
    log_results(outcome.ingested, source)
    return WebhookResults(results=[_answer(item) for item in outcome.results])


@router.get(
    "/v1/webhooks/{source}",
    response_model=WebhookSource,
    summary="URL check by the platform (Mailchimp sends GET, Mandrill HEAD)",
    responses=problem_responses(404),
)
async def check_webhook_url(source: str) -> WebhookSource:
    """200 for a known source, so that the platform accepts the URL; nothing is read or stored."""
    return WebhookSource(source=service.adapter_for(source).name, ok=True)


# HEAD answers like GET (Mandrill's check). A route of its own, not methods=["GET", "HEAD"]:
# a set of methods is listed in the OpenAPI document in hash order, which changes between runs.
router.add_api_route(
    "/v1/webhooks/{source}",
    check_webhook_url,
    methods=["HEAD"],
    response_model=WebhookSource,
    summary="URL check by the platform (Mandrill sends HEAD)",
    responses=problem_responses(404),
)
