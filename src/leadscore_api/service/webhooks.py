"""Inbound platform webhooks: authenticate, translate, ingest, answer per platform event.

Platforms cannot send our API keys, so each request is authenticated the platform's own way
(signature, basic auth or URL token, see ``ingest/sources``). The events then take the same path
as ``POST /v1/events`` (one unit of work, each event stored once by id). A platform event that
describes no lead (a Mailchimp campaign notice) is answered ``ignored``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.config import Settings
from leadscore_api.errors import LeadscoreError, NotFound, SourceNotConfigured
from leadscore_api.ingest.attributes import parse_field_map
from leadscore_api.ingest.events import CanonicalEvent
from leadscore_api.ingest.parsing import EventError, IngestItem
from leadscore_api.ingest.signatures import PayloadError, SignatureError
from leadscore_api.ingest.sources import (
    ADAPTERS,
    Adapter,
    AdapterError,
    Ignored,
    Item,
    SourceConfig,
    WebhookRequest,
)
from leadscore_api.ingest.sources.mailgun import body_fingerprint
from leadscore_api.ingest.storable import printable_id
from leadscore_api.service.ingestion import EventResult, ingest_events
from leadscore_api.service.rulesets import RulesetRegistry
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.repositories import webhook_tokens
from leadscore_api.storage.unit_of_work import in_transaction


class ReplayedToken(SignatureError):
    """A single-use signing token came back with a different body."""


@dataclass(frozen=True)
class WebhookOutcome:
    """One answer per platform event, in input order, and the results of those ingested."""

    results: list[EventResult | Ignored]
    ingested: list[EventResult]


def adapter_for(source: str) -> Adapter:
    adapter = ADAPTERS.get(source)
    if adapter is None:
        known = ", ".join(sorted(ADAPTERS))
        raise NotFound(f"unknown webhook source {source!r}; the sources are: {known}")
    return adapter


def secret_setting(source: str) -> str:
    """The environment variable that holds a source's secret."""
    return f"LEADSCORE_WEBHOOK_{source.upper()}_SECRET"


def source_config(source: str, settings: Settings) -> SourceConfig:
    """What the adapter of ``source`` needs from the settings.

    Raises ``SourceNotConfigured``, naming the variable to set, when the secret is unset. The
    field maps were checked when the settings loaded.
    """
    secret = getattr(settings, f"webhook_{source}_secret", None)
    if not secret or not str(secret).strip():
        raise SourceNotConfigured(
            f"source {source} is not configured: set {secret_setting(source)}"
        )
    field_map_text: str | None = None
    field_map_setting = ""
    if source in ("form", "mailchimp"):
        field_map_text = settings.webhook_form_field_map
        field_map_setting = "LEADSCORE_WEBHOOK_FORM_FIELD_MAP"
    elif source == "typeform":
        field_map_text = settings.webhook_typeform_field_map
        field_map_setting = "LEADSCORE_WEBHOOK_TYPEFORM_FIELD_MAP"
    field_map = parse_field_map(field_map_text, field_map_setting)
    return SourceConfig(
        secret=str(secret).strip(),
        tolerance_seconds=settings.webhook_timestamp_tolerance_seconds,
        signed_url=settings.webhook_mandrill_url if source == "mandrill" else None,
        field_map=field_map,
    )


def remember_token(
    session: Session, source: str, token: str, body_sha256: str, settings: Settings
) -> None:
    """Record a single-use token; the same token with another body is a replay (401).

    Rows older than twice the tolerance are pruned: a signed timestamp may be up to one
    tolerance ahead of our clock when first seen, and stops being accepted one tolerance after.
    """
    now = utcnow()
    horizon = now - timedelta(seconds=2 * settings.webhook_timestamp_tolerance_seconds)
    webhook_tokens.prune(session, horizon)
    existing = webhook_tokens.get(session, source, token)
    if existing is None:
        webhook_tokens.add(session, source, token, body_sha256, now)
    elif existing.body_sha256 != body_sha256:
        raise ReplayedToken("this signing token was already used with another body")


def _to_ingest(items: Sequence[Item]) -> tuple[list[IngestItem], dict[int, Ignored]]:
    ingest: list[IngestItem] = []
    ignored: dict[int, Ignored] = {}
    for position, item in enumerate(items):
        if isinstance(item, Ignored):
            ignored[position] = item
        elif isinstance(item, AdapterError):
            ingest.append(EventError(printable_id(item.id), item.error))
        else:
            assert isinstance(item, CanonicalEvent)
            ingest.append(item)
    return ingest, ignored


def receive(
    source: str,
    request: WebhookRequest,
    settings: Settings,
    registry: RulesetRegistry,
    session_factory: sessionmaker[Session],
) -> WebhookOutcome:
    """Authenticate, translate and ingest one platform request (does SQL and crypto: a thread).

    A refusal names the source in its detail (``sendgrid: the signature does not match``), so
    an operator reading a platform's delivery log knows which setting to look at.
    """
    adapter = adapter_for(source)
    try:
        return _receive(adapter, request, settings, registry, session_factory)
    except LeadscoreError as exc:
        if isinstance(exc, SignatureError | PayloadError):
            exc.detail = f"{adapter.name}: {exc.detail}"
        raise


def _receive(
    adapter: Adapter,
    request: WebhookRequest,
    settings: Settings,
    registry: RulesetRegistry,
    session_factory: sessionmaker[Session],
) -> WebhookOutcome:
    config = source_config(adapter.name, settings)
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
        return ingest_events(session, registry, ingest)

    ingested = in_transaction(session_factory, work)
    answers = iter(ingested)
    results: list[EventResult | Ignored] = [
        ignored[position] if position in ignored else next(answers)
        for position in range(len(items))
    ]
    return WebhookOutcome(results=results, ingested=ingested)
