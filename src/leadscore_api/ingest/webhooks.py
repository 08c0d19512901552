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

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from leadscore_api.api.problems import Problem, problem_responses
from leadscore_api.config import Settings
from leadscore_api.ingest.events import CanonicalEvent
from leadscore_api.ingest.models import WebhookReplayToken
from leadscore_api.ingest.signatures import PayloadError, SignatureError, SourceNotConfigured
from leadscore_api.ingest.sources import (
    ADAPTERS,
    Adapter,
    AdapterError,
    Ignored,
    Item,
    SourceConfig,
    WebhookRequest,
    source_config,
)
from leadscore_api.ingest.sources.mailgun import body_fingerprint
from leadscore_api.service.ingest import (
    EventError,
    EventResult,
    IngestItem,
    in_transaction,
    ingest_events,
)
from leadscore_api.service.registry import RulesetRegistry
from leadscore_api.storage.base import utcnow

router = APIRouter(tags=["webhooks"])

#: Sources authenticated with HTTP basic auth: their 401 carries a Basic challenge.
_BASIC_AUTH_SOURCES = frozenset({"postmark", "brevo"})


class ReplayedToken(SignatureError):
    """A single-use signing token came back with a different body."""


@dataclass(frozen=True)
class _Outcome:
    results: list[dict[str, Any]]
    ingest_results: list[EventResult]


def _adapter(source: str) -> Adapter:
    adapter = ADAPTERS.get(source)
    if adapter is None:
        known = ", ".join(sorted(ADAPTERS))
        raise Problem(
            404,
            f"unknown webhook source {source!r}; the sources are: {known}",
            slug="unknown-source",
        )
    return adapter


def remember_token(
    session: Session, source: str, token: str, body_sha256: str, settings: Settings
) -> None:
    """Record a single-use token; the same token with another body is a replay (401).

    Rows older than twice the tolerance are pruned: a signed timestamp may be up to one
    tolerance ahead of our clock when first seen, and stops being accepted one tolerance after.
    """
    now = utcnow()
    horizon = now - timedelta(seconds=2 * settings.webhook_timestamp_tolerance_seconds)
    session.execute(delete(WebhookReplayToken).where(WebhookReplayToken.seen_at < horizon))
    existing = session.get(WebhookReplayToken, (source, token))
    if existing is None:
        # A concurrent insert of the same token fails on the primary key; the transaction is
        # then run again and finds this row.
        session.add(
            WebhookReplayToken(source=source, token=token, body_sha256=body_sha256, seen_at=now)
        )
        session.flush()
    elif existing.body_sha256 != body_sha256:
        raise ReplayedToken("this signing token was already used with another body")


def _to_ingest(items: Sequence[Item]) -> tuple[list[IngestItem], dict[int, Ignored]]:
    ingest: list[IngestItem] = []
    ignored: dict[int, Ignored] = {}
    for position, item in enumerate(items):
        if isinstance(item, Ignored):
            ignored[position] = item
        elif isinstance(item, AdapterError):
            ingest.append(EventError(item.id, item.error))
        else:
            assert isinstance(item, CanonicalEvent)
            ingest.append(item)
    return ingest, ignored


def _handle(
    adapter: Adapter,
    request: WebhookRequest,
    config: SourceConfig,
    settings: Settings,
    registry: RulesetRegistry,
    session_factory: sessionmaker[Session],
) -> _Outcome:
    """Authenticate, translate and ingest (runs in a worker thread: it does SQL and crypto)."""
    verified = adapter.verify(request, config)
    items = adapter.parse(request, config)
    if len(items) > settings.max_batch_size:
        raise PayloadError(
            f"the request has {len(items)} events; at most {settings.max_batch_size} per request"
            " (LEADSCORE_MAX_BATCH_SIZE)"
        )
    ingest, ignored = _to_ingest(items)
    token = verified.replay_token
    fingerprint = body_fingerprint(request.body)

    def work(session: Session) -> list[EventResult]:
        if token is not None:
            remember_token(session, adapter.name, token, fingerprint, settings)
        if not ingest:
            return []
        return ingest_events(session, registry, settings, ingest)

    ingested = in_transaction(session_factory, work)
    answers = iter(ingested)
    results: list[dict[str, Any]] = []
    for position in range(len(items)):
        skipped = ignored.get(position)
        if skipped is not None:
            results.append(
                {
                    "id": skipped.id,
                    "status": "ignored",
                    "lead_id": None,
                    "error": None,
                    "unknown_type": False,
                    "warning": skipped.reason,
                }
            )
        else:
            results.append(next(answers).to_api())
    return _Outcome(results=results, ingest_results=ingested)


@router.post(
    "/v1/webhooks/{source}",
    summary="Receive a platform's webhook (SendGrid, Mailgun, Mailchimp, Mandrill, ...)",
    responses=problem_responses(400, 401, 403, 404, 413),
)
async def receive_webhook(source: str, request: Request) -> dict[str, Any]:
    """The body is the platform's own payload, authenticated the platform's way.

    See docs/integrations.md for the URL and secret of each platform.
    """
    adapter = _adapter(source)
    settings: Settings = request.app.state.settings
    try:
        config = source_config(source, settings)
    except SourceNotConfigured as exc:
        raise Problem(403, str(exc), slug="source-not-configured") from None
    inbound = WebhookRequest(
        method=request.method,
        url=str(request.url),
        headers=dict(request.headers),
        query=dict(request.query_params),
        body=await request.body(),
        received_at=utcnow(),
    )
    try:
        outcome = await run_in_threadpool(
            _handle,
            adapter,
            inbound,
            config,
            settings,
            request.app.state.registry,
            request.app.state.session_factory,
        )
    except SignatureError as exc:
        headers = (
            {"WWW-Authenticate": 'Basic realm="leadscore webhooks"'}
            if source in _BASIC_AUTH_SOURCES
            else None
        )
        raise Problem(
            401, f"{source}: {exc}", slug="webhook-unauthenticated", headers=headers
        ) from None
    except SourceNotConfigured as exc:
        raise Problem(403, str(exc), slug="source-not-configured") from None
    except PayloadError as exc:
        raise Problem(400, f"{source}: {exc}", slug="invalid-payload") from None
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.record_ingest(outcome.ingest_results)
    return {"results": outcome.results}


@router.get(
    "/v1/webhooks/{source}",
    summary="URL check by the platform (Mailchimp sends GET, Mandrill HEAD)",
    responses=problem_responses(404),
)
async def check_webhook_url(source: str) -> dict[str, Any]:
    """200 for a known source, so that the platform accepts the URL; nothing is read or stored."""
    adapter = _adapter(source)
    return {"source": adapter.name, "ok": True}


# HEAD answers like GET (Mandrill's check). A route of its own, not methods=["GET", "HEAD"]:
# a set of methods is listed in the OpenAPI document in hash order, which changes between runs.
router.add_api_route(
    "/v1/webhooks/{source}",
    check_webhook_url,
    methods=["HEAD"],
    summary="URL check by the platform (Mandrill sends HEAD)",
    responses=problem_responses(404),
)
