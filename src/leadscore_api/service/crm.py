"""CRM connectors as a domain: configuring them, outcomes coming back, the periodic pull.

Scores and tasks go out through the outbox (:mod:`leadscore_api.service.crm_outbox` queues,
``delivery/crm.py`` sends). What comes back, a CRM's change notification or a pull of recent
changes, becomes canonical events (``lead.accepted``, ``lead.contacted``,
``opportunity.created``, ``deal.won``, ``deal.lost``) ingested the way ``POST /v1/events``
ingests them: same scoring, same outcomes table, idempotent by event id
(``crm:{connector}:{dedup_key}``). An outcome about a person we do not know is counted and
logged, never turned into a new lead: the CRM's whole customer base is not ours to score.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.config import Settings
from leadscore_api.crm.base import (
    Acknowledgement,
    Connector,
    CrmError,
    InboundRequest,
    NotificationRejected,
    Outcome,
    SetupReport,
)
from leadscore_api.crm.registry import ConnectorSpec, check_connector, load_file, parse_spec
from leadscore_api.delivery.crm import (
    StoredTokens,
    config_of,
    describe,
    guarded_client,
    open_connector,
)
from leadscore_api.delivery.signer import generate_secret
from leadscore_api.delivery.ssrf import UnsafeTargetError, validate_url
from leadscore_api.errors import Conflict, InvalidInput, LeadscoreError, NotFound, Unauthenticated
from leadscore_api.ingest.events import CanonicalEvent, LeadRef
from leadscore_api.service import crm_outbox
from leadscore_api.service.ingestion import EventResult, ingest_events
from leadscore_api.service.rulesets import RulesetRegistry
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.crm_models import CrmConnector
from leadscore_api.storage.delivery_models import Subscription
from leadscore_api.storage.ids import new_id
from leadscore_api.storage.models import IDENTITY_EMAIL, Lead
from leadscore_api.storage.repositories import crm as crm_repo
from leadscore_api.storage.repositories import leads as leads_repo
from leadscore_api.storage.repositories import subscriptions as subscriptions_repo
from leadscore_api.storage.unit_of_work import in_transaction, transactional

log = logging.getLogger("leadscore.crm")

#: A first pull reaches back this far before the connector was created.
FIRST_PULL_LOOKBACK = timedelta(days=30)
#: Leads per statement when a new connector is back-filled.
BACKFILL_CHUNK = 500


class UnsafeCrmTarget(InvalidInput):
    problem_type = "unsafe-crm-target"
    title = "CRM base URL refused"


class CrmNotificationRejected(Unauthenticated):
    problem_type = "crm-notification-rejected"
    title = "CRM notification not authenticated"


class CrmUnavailable(LeadscoreError):
    """The CRM answered an error or could not be reached (a setup or a pull run by hand)."""

    status = 502
    problem_type = "crm-unavailable"
    title = "CRM call failed"


class ConnectorExists(Conflict):
    problem_type = "crm-connector-exists"
    title = "CRM connector exists"


# -- configuring -------------------------------------------------------------------------------


def _checked_url(url: str, *, allow_private: bool) -> str:
    try:
        return validate_url(url, allow_private=allow_private)
    except UnsafeTargetError as exc:
        raise UnsafeCrmTarget.field("base_url", str(exc)) from exc


def get_connector(session: Session, name: str) -> CrmConnector:
    row = crm_repo.get(session, name)
    if row is None:
        raise NotFound(f"no CRM connector {name!r}")
    return row


def list_connectors(session: Session) -> list[CrmConnector]:
    return crm_repo.list_all(session)


def spec_of(row: CrmConnector) -> ConnectorSpec:
    return ConnectorSpec(
        name=row.name,
        kind=row.kind,
        base_url=row.base_url,
        credentials=dict(row.credentials or {}),
        field_map=dict(row.field_map or {}),
        owner_map=dict(row.owner_map or {}),
        create_missing=row.create_missing,
        options=dict(row.options or {}),
        enabled=row.enabled,
    )


def _fill(row: CrmConnector, spec: ConnectorSpec, now: datetime) -> None:
    if (row.base_url, row.credentials) != (spec.base_url, spec.credentials):
        row.token_state = {}  # tokens of other credentials or another host are of no use
    row.kind = spec.kind
    row.base_url = spec.base_url
    row.credentials = dict(spec.credentials)
    row.field_map = dict(spec.field_map)
    row.owner_map = dict(spec.owner_map)
    row.create_missing = spec.create_missing
    row.options = dict(spec.options)
    row.enabled = spec.enabled
    row.updated_at = now


def _create(session: Session, spec: ConnectorSpec, allow_private: bool) -> CrmConnector:
    check_connector(spec)
    if crm_repo.get(session, spec.name) is not None:
        raise ConnectorExists(f"a CRM connector named {spec.name!r} exists")
    now = utcnow()
    _checked_url(spec.base_url, allow_private=allow_private)
    sub = Subscription(
        id=new_id("sub"),
        url=f"crm://{spec.name}",
        event_types=[],
        filters={},
        description=f"CRM connector {spec.name} ({spec.kind})",
        secret=generate_secret(),
        enabled=spec.enabled,
        created_at=now,
        updated_at=now,
    )
    subscriptions_repo.add(session, sub)
    row = CrmConnector(
        name=spec.name,
        kind=spec.kind,
        base_url=spec.base_url,
        credentials={},
        subscription_id=sub.id,
        token_state={},
        created_at=now,
    )
    _fill(row, spec, now)
    crm_repo.add(session, row)
    return row


def _replace(
    session: Session, row: CrmConnector, spec: ConnectorSpec, allow_private: bool
) -> CrmConnector:
    check_connector(spec)
    if spec.base_url != row.base_url:
        _checked_url(spec.base_url, allow_private=allow_private)
    now = utcnow()
    _fill(row, spec, now)
    sub = subscriptions_repo.get(session, row.subscription_id)
    if sub is not None and sub.enabled != spec.enabled:
        sub.enabled = spec.enabled
        sub.disabled_reason = None if spec.enabled else "CRM connector disabled"
        sub.disabled_at = None if spec.enabled else now
        sub.updated_at = now
    session.flush()
    return row


@transactional
def create_connector(session: Session, spec: ConnectorSpec, *, allow_private: bool) -> CrmConnector:
    return _create(session, spec, allow_private)


#: Fields ``PATCH /v1/crm/connectors/{name}`` may change (the name and kind may not).
PATCHABLE = (
    "base_url",
    "credentials",
    "field_map",
    "owner_map",
    "create_missing",
    "options",
    "enabled",
)


@transactional
def update_connector(
    session: Session, name: str, changes: dict[str, Any], *, allow_private: bool
) -> CrmConnector:
    """A partial update; ``credentials`` given are merged into the stored ones (so a caller
    can rotate one secret without knowing the others), the other fields are replaced."""
    row = get_connector(session, name)
    data = spec_of(row).model_dump()
    for key, value in changes.items():
        if key == "credentials" and isinstance(value, dict):
            data["credentials"] = {**data["credentials"], **value}
        else:
            data[key] = value
    return _replace(session, row, parse_spec(data), allow_private)


@transactional
def delete_connector(session: Session, name: str) -> None:
    """The connector, its records and its queued messages (they belong to its subscription)."""
    row = get_connector(session, name)
    sub = subscriptions_repo.get(session, row.subscription_id)
    crm_repo.delete_connector(session, row)
    if sub is not None:
        subscriptions_repo.delete(session, sub)


@dataclass
class Applied:
    name: str
    action: str  # created | updated | unchanged


@transactional
def apply_specs(
    session: Session, specs: Sequence[ConnectorSpec], *, allow_private: bool
) -> list[Applied]:
    """The file's connectors, upserted by name (connectors not in the file are left alone)."""
    out: list[Applied] = []
    for spec in specs:
        row = crm_repo.get(session, spec.name)
        if row is None:
            _create(session, spec, allow_private)
            out.append(Applied(spec.name, "created"))
        elif spec_of(row) == spec:
            out.append(Applied(spec.name, "unchanged"))
        else:
            _replace(session, row, spec, allow_private)
            out.append(Applied(spec.name, "updated"))
    return out


def apply_file(session_factory: sessionmaker[Session], settings: Settings) -> list[Applied]:
    """``LEADSCORE_CRM_FILE`` at start-up: a bad file stops the start, naming the field."""
    assert settings.crm_file is not None
    specs = load_file(settings.crm_file)
    applied = apply_specs(
        session_factory, specs, allow_private=settings.webhook_allow_private_targets
    )
    for item in applied:
        log.info("crm connector %s %s from %s", item.name, item.action, settings.crm_file)
    return applied


@transactional
def backfill(session: Session, name: str) -> int:
    """Queue a sync of every current lead to one connector (after ``crm connect``)."""
    row = get_connector(session, name)
    now = utcnow()
    targets = [(row.name, row.subscription_id)]
    count = 0
    after = ""
    while True:
        ids = list(
            session.scalars(
                select(Lead.id).where(Lead.id > after).order_by(Lead.id).limit(BACKFILL_CHUNK)
            )
        )
        if not ids:
            return count
        for lead_id in ids:
            crm_outbox.queue_sync(session, targets, lead_id, now)
        session.flush()
        count += len(ids)
        after = ids[-1]


# -- talking to the CRM outside the outbox -------------------------------------------------------


@dataclass
class _Opened:
    name: str
    connector: Connector
    tokens: StoredTokens


def _load(session_factory: sessionmaker[Session], name: str) -> tuple[CrmConnector, StoredTokens]:
    def work(session: Session) -> tuple[CrmConnector, StoredTokens]:
        row = get_connector(session, name)
        session.expunge(row)
        return row, StoredTokens(row.token_state)

    return in_transaction(session_factory, work)


def _save_tokens(session_factory: sessionmaker[Session], name: str, tokens: StoredTokens) -> None:
    if tokens.changed:
        in_transaction(
            session_factory,
            lambda session: crm_repo.save_token_state(session, name, tokens.values),
        )


@contextlib.asynccontextmanager
async def _opened(session_factory: sessionmaker[Session], name: str, settings: Settings) -> Any:
    row, tokens = await asyncio.to_thread(_load, session_factory, name)
    async with guarded_client(
        allow_private=settings.webhook_allow_private_targets,
        timeout=settings.delivery_timeout_seconds,
    ) as http:
        try:
            yield row, open_connector(config_of(row), http, tokens)
        finally:
            await asyncio.to_thread(_save_tokens, session_factory, name, tokens)


def _crm_failure(name: str, exc: Exception) -> CrmUnavailable:
    return CrmUnavailable(f"CRM connector {name}: {describe(exc)}")


async def run_setup(
    session_factory: sessionmaker[Session], name: str, settings: Settings
) -> SetupReport:
    """Create the custom fields of the field map in the CRM where its API allows it."""
    async with _opened(session_factory, name, settings) as (_, connector):
        try:
            report: SetupReport = await connector.setup()
        except (CrmError, UnsafeTargetError, OSError) as exc:
            raise _crm_failure(name, exc) from exc
        except Exception as exc:
            if type(exc).__module__.startswith("httpx"):
                raise _crm_failure(name, exc) from exc
            raise
        return report


# -- outcomes in -------------------------------------------------------------------------------


@dataclass
class OutcomeCounts:
    """What became of the outcomes of one notification or pull."""

    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    unknown_person: int = 0
    results: list[EventResult] = field(default_factory=list)


def _lead_for(session: Session, connector: str, outcome: Outcome) -> Lead | None:
    lead_id = None
    if outcome.record is not None:
        lead_id = crm_repo.lead_by_record(session, connector, outcome.record.record_id)
    if lead_id is None and outcome.email:
        email = outcome.email.strip().lower()
        known = leads_repo.known_identities(session, [email], [])
        lead_id = known.get((IDENTITY_EMAIL, email))
    return session.get(Lead, lead_id) if lead_id is not None else None


def ingest_outcomes(
    session_factory: sessionmaker[Session],
    registry: RulesetRegistry,
    connector: str,
    outcomes: Sequence[Outcome],
) -> OutcomeCounts:
    """Each outcome as a canonical event on its lead, in one unit of work."""

    def work(session: Session) -> OutcomeCounts:
        counts = OutcomeCounts()
        events: list[CanonicalEvent] = []
        for outcome in outcomes:
            lead = _lead_for(session, connector, outcome)
            if lead is None or (lead.email is None and lead.external_id is None):
                counts.unknown_person += 1
                continue
            events.append(
                CanonicalEvent(
                    id=f"crm:{connector}:{outcome.dedup_key}"[:200],
                    type=outcome.type,
                    occurred_at=outcome.occurred_at,
                    lead=LeadRef(email=lead.email, external_id=None)
                    if lead.email
                    else LeadRef(external_id=lead.external_id),
                    source=f"crm:{connector}"[:100],
                    properties=dict(outcome.properties),
                )
            )
        if events:
            counts.results = ingest_events(session, registry, events)
        for result in counts.results:
            if result.status == "accepted":
                counts.accepted += 1
            elif result.status == "duplicate":
                counts.duplicate += 1
            else:
                counts.rejected += 1
        return counts

    counts = in_transaction(session_factory, work)
    if counts.unknown_person:
        log.info(
            "crm %s: %d outcome(s) about people we do not score were skipped",
            connector,
            counts.unknown_person,
        )
    return counts


async def receive_notification(
    session_factory: sessionmaker[Session],
    registry: RulesetRegistry,
    settings: Settings,
    name: str,
    request: InboundRequest,
) -> tuple[Acknowledgement, OutcomeCounts]:
    """Verify a CRM's change notification the CRM's way, and ingest its outcomes."""
    async with _opened(session_factory, name, settings) as (row, connector):
        if not row.enabled:
            raise NotFound(f"CRM connector {name!r} is disabled")
        try:
            connector.verify_notification(request, utcnow())
        except NotificationRejected as exc:
            raise CrmNotificationRejected(f"{name}: {exc}") from exc
        try:
            outcomes = await connector.parse_notification(request)
        except NotificationRejected as exc:
            raise CrmNotificationRejected(f"{name}: {exc}") from exc
        except CrmError as exc:
            raise _crm_failure(name, exc) from exc
        counts = await asyncio.to_thread(ingest_outcomes, session_factory, registry, name, outcomes)
        return connector.acknowledgement(request), counts


# -- the pull ----------------------------------------------------------------------------------


@dataclass
class PullResult:
    name: str
    pulled: bool
    counts: OutcomeCounts = field(default_factory=OutcomeCounts)
    cursor: datetime | None = None
    error: str | None = None


def _take_lease(
    session_factory: sessionmaker[Session], name: str, owner: str, interval: float, lease: float
) -> tuple[bool, datetime | None]:
    def work(session: Session) -> tuple[bool, datetime | None]:
        now = utcnow()
        row = get_connector(session, name)
        won = crm_repo.take_pull_lease(
            session,
            name,
            owner=owner,
            now=now,
            until=now + timedelta(seconds=lease),
            due_before=now - timedelta(seconds=interval),
        )
        since = row.pull_cursor or (row.created_at - FIRST_PULL_LOOKBACK)
        return won, since

    return in_transaction(session_factory, work)


def _finish(
    session_factory: sessionmaker[Session],
    name: str,
    owner: str,
    cursor: datetime | None,
    error: str | None,
) -> None:
    in_transaction(
        session_factory,
        lambda session: crm_repo.finish_pull(
            session, name, owner=owner, now=utcnow(), cursor=cursor, error=error
        ),
    )


def pull_owner() -> str:
    return f"{socket.gethostname()[:30]}-{new_id('pul')[-8:]}"


async def pull_connector(
    session_factory: sessionmaker[Session],
    registry: RulesetRegistry,
    settings: Settings,
    name: str,
    *,
    owner: str,
    interval: float = 0.0,
) -> PullResult:
    """Pull one connector's recent changes unless another replica holds its lease (or pulled it
    less than ``interval`` seconds ago); the cursor advances only when the outcomes are in."""
    lease = settings.delivery_timeout_seconds * 4 + 60
    won, since = await asyncio.to_thread(_take_lease, session_factory, name, owner, interval, lease)
    if not won or since is None:
        return PullResult(name=name, pulled=False)
    cursor: datetime | None = None
    error: str | None = None
    counts = OutcomeCounts()
    try:
        async with _opened(session_factory, name, settings) as (_, connector):
            outcomes, cursor = await connector.pull_changes(since)
            counts = await asyncio.to_thread(
                ingest_outcomes, session_factory, registry, name, outcomes
            )
    except Exception as exc:
        cursor = None
        error = describe(exc)
        log.warning("crm %s: pull failed: %s", name, error)
    await asyncio.to_thread(_finish, session_factory, name, owner, cursor, error)
    return PullResult(name=name, pulled=True, counts=counts, cursor=cursor, error=error)


def _enabled_names(session_factory: sessionmaker[Session]) -> list[str]:
    return [name for name, _ in in_transaction(session_factory, crm_repo.enabled_targets)]


async def run_pull_loop(
    session_factory: sessionmaker[Session],
    registry: RulesetRegistry,
    settings: Settings,
    stop: asyncio.Event,
) -> None:
    """Every ``LEADSCORE_CRM_PULL_SECONDS``, pull each enabled connector once across replicas."""
    interval = settings.crm_pull_seconds
    owner = pull_owner()
    while not stop.is_set():
        try:
            for name in await asyncio.to_thread(_enabled_names, session_factory):
                await pull_connector(
                    session_factory, registry, settings, name, owner=owner, interval=interval
                )
        except Exception:
            log.exception("crm pull round failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)


@contextlib.asynccontextmanager
async def running_pull(
    session_factory: sessionmaker[Session], registry: RulesetRegistry, settings: Settings
) -> Any:
    """The pull loop for the duration of the block (nothing when the interval is 0)."""
    if settings.crm_pull_seconds <= 0:
        yield
        return
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_pull_loop(session_factory, registry, settings, stop), name="leadscore-crm-pull"
    )
    try:
        yield
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, timeout=settings.delivery_timeout_seconds + 5)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
