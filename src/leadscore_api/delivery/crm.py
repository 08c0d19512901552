"""The CRM side of the outbox: claim ``crm.*`` messages and hand them to the connectors.

CRM messages are ordinary outbox rows of a subscription that a connector owns, so they share
the webhooks' retries, dead letters, manual retry, replay and ``/v1/deliveries``. What differs
is the send step: instead of signing and POSTing the row, the dispatcher calls the connector.

* ``crm.sync`` carries no lead data: the lead's **current** state is read when the message is
  sent, so the syncs of one lead queued meanwhile coalesce into one write. The syncs of one
  connector in a round go in batches of the connector's ``max_batch``.
* ``crm.task`` (the owner's task at hand-over), ``crm.erase`` (a record reference only: no
  personal data stays queued) and ``crm.merge`` (both references).
* ``CrmRateLimited`` pushes back **every** pending message of that connector by its
  ``retry_after``, without counting it as a failed attempt toward the dead letter: the CRM
  said "not now", not "no". ``CrmError(permanent=True)`` is a dead letter at once.
* A batch is settled lead by lead: the records written are kept and their messages delivered
  even when the push raised ``CrmPartialFailure``; leads in the connector's
  ``last_push_errors`` (refused for good) go to the dead letter with the CRM's message; the
  partial failure's ``failed`` leads are retried.
* Any other fault, building the connector (an option stored before it was checked) or calling
  it, is a failed attempt on the messages concerned: it never ends the round, so the other
  connectors' results are recorded.

Every request a connector makes passes the SSRF guard (``delivery/ssrf.py``) as webhooks do: a
connector's base URL is chosen by whoever configures it, and token answers (Salesforce's
``instance_url``, Zoho's ``api_domain``) name further hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.crm.base import (
    Connector,
    ConnectorConfig,
    CrmError,
    CrmPartialFailure,
    CrmRateLimited,
    HandoverTask,
    LeadSnapshot,
    RecordRef,
)
from leadscore_api.crm.registry import connector_class
from leadscore_api.delivery.schedule import next_delay
from leadscore_api.delivery.ssrf import UnsafeTargetError, checked_target
from leadscore_api.errors import LeadscoreError
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.crm_models import CrmConnector
from leadscore_api.storage.delivery_models import (
    STATUS_DELIVERED,
    STATUS_FAILED,
    STATUS_PENDING,
    DeliveryAttempt,
    OutboxMessage,
    Subscription,
)
from leadscore_api.storage.ids import new_id
from leadscore_api.storage.models import Lead
from leadscore_api.storage.repositories import crm as crm_repo
from leadscore_api.storage.repositories import outbox
from leadscore_api.storage.unit_of_work import in_transaction

log = logging.getLogger("leadscore.crm")

SYNC = "crm.sync"
TASK = "crm.task"
ERASE = "crm.erase"
MERGE = "crm.merge"
CRM_TYPES = (SYNC, TASK, ERASE, MERGE)
#: Outbox event types handled here rather than POSTed as webhooks.
CRM_PREFIX = "crm."
#: The lead attributes a connector may use when it creates a record.
SNAPSHOT_ATTRIBUTES = ("first_name", "last_name", "company", "phone")


# -- what every connector call goes through ------------------------------------------------------


class StoredTokens:
    """A TokenCache loaded from ``crm_connectors.token_state`` and written back when changed,
    so that every replica reuses the access token one of them obtained."""

    def __init__(self, initial: Mapping[str, Any] | None = None) -> None:
        self.values: dict[str, Any] = dict(initial or {})
        self.changed = False

    def get(self) -> Mapping[str, Any]:
        return dict(self.values)

    def put(self, values: Mapping[str, Any]) -> None:
        self.values.update(values)
        self.changed = True


def guarded_client(*, allow_private: bool, timeout: float) -> httpx.AsyncClient:
    """An httpx client whose every request is refused unless its host resolves to public
    addresses (``LEADSCORE_WEBHOOK_ALLOW_PRIVATE_TARGETS`` lifts it, as for webhooks)."""

    async def check(request: httpx.Request) -> None:
        await checked_target(str(request.url), allow_private=allow_private)

    return httpx.AsyncClient(
        follow_redirects=False,
        timeout=httpx.Timeout(timeout),
        trust_env=False,
        event_hooks={"request": [check]},
    )


def config_of(row: CrmConnector) -> ConnectorConfig:
    return ConnectorConfig(
        name=row.name,
        kind=row.kind,  # type: ignore[arg-type]
        base_url=row.base_url,
        credentials=dict(row.credentials or {}),
        field_map=dict(row.field_map or {}),
        owner_map=dict(row.owner_map or {}),
        create_missing=row.create_missing,
        options=dict(row.options or {}),
    )


def open_connector(
    config: ConnectorConfig, http: httpx.AsyncClient, tokens: StoredTokens
) -> Connector:
    return connector_class(config.kind)(config, http, tokens)


def snapshot_of(lead: Lead) -> LeadSnapshot:
    attributes = lead.attributes or {}
    return LeadSnapshot(
        lead_id=lead.id,
        email=lead.email,
        letter=lead.letter,
        score=lead.score,
        tier=lead.tier,
        stage=lead.stage,
        owner=lead.owner,
        next_action=lead.next_action,
        next_action_due=lead.next_action_due,
        updated_at=lead.updated_at,
        attributes={k: attributes[k] for k in SNAPSHOT_ATTRIBUTES if attributes.get(k)},
    )


def ref_of(data: Mapping[str, Any]) -> RecordRef:
    return RecordRef(object_type=str(data["object_type"]), record_id=str(data["record_id"]))


def ref_json(ref: RecordRef) -> dict[str, str]:
    return {"object_type": ref.object_type, "record_id": ref.record_id}


def describe(exc: BaseException) -> str:
    if isinstance(exc, UnsafeTargetError):
        return f"target refused: {exc}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def as_crm_error(exc: BaseException) -> CrmError:
    """Whatever a connector raised, as the outbox understands it (unknown: retryable)."""
    if isinstance(exc, CrmError):
        return exc
    if isinstance(exc, LeadscoreError) and exc.status == 422:
        return CrmError(exc.detail, permanent=True)
    return CrmError(describe(exc))


# -- one round ---------------------------------------------------------------------------------


@dataclass
class Claimed:
    """One claimed CRM message, copied out of the claim transaction."""

    message_id: str
    claim_token: str
    subscription_id: str
    event_type: str
    lead_id: str | None
    payload: dict[str, Any]


@dataclass
class ConnectorWork:
    """Everything one connector needs for its messages of this round."""

    config: ConnectorConfig
    subscription_id: str
    tokens: StoredTokens
    messages: list[Claimed] = field(default_factory=list)
    snapshots: dict[str, LeadSnapshot] = field(default_factory=dict)
    known: dict[str, RecordRef] = field(default_factory=dict)


@dataclass
class Outcome:
    """What happened to one message this round."""

    claimed: Claimed
    attempted_at: datetime
    duration_ms: float = 0.0
    error: CrmError | None = None
    note: str | None = None
    rate_limited: float | None = None


@dataclass
class ConnectorResult:
    name: str
    subscription_id: str
    outcomes: list[Outcome] = field(default_factory=list)
    #: lead id -> the record that now stands for it.
    records: dict[str, RecordRef] = field(default_factory=dict)
    tokens: StoredTokens | None = None
    rate_limited: float | None = None


@dataclass
class CrmOptions:
    allow_private_targets: bool = False
    retry_delays: tuple[float, ...] = (0.0,)
    timeout_seconds: float = 15.0
    poll_seconds: float = 0.5
    batch_size: int = 200
    wake_on_commit: bool = True


class CrmDispatcher:
    """Sends the ``crm.*`` outbox messages; several may run against one database."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        options: CrmOptions,
        *,
        dead_letters: Any = None,
    ) -> None:
        self.session_factory = session_factory
        self.options = options
        self.dead_letters = dead_letters
        self._wake = asyncio.Event()

    # -- claim -------------------------------------------------------------------------------

    def claim(self) -> list[ConnectorWork]:
        token = new_id("clm")

        def work(session: Session) -> list[ConnectorWork]:
            now = utcnow()
            # A round may make several calls per connector; its lease covers a few of them.
            lease = timedelta(seconds=self.options.timeout_seconds * 4 + 10)
            rows = _claim_due(
                session, now=now, limit=self.options.batch_size, token=token, until=now + lease
            )
            if not rows:
                return []
            connectors = crm_repo.by_subscription_ids(session, {r.subscription_id for r in rows})
            works: dict[str, ConnectorWork] = {}
            for row in rows:
                connector = connectors.get(row.subscription_id)
                if connector is None:
                    continue  # a subscription no connector owns: left to its lease
                found = works.get(connector.name)
                if found is None:
                    found = works[connector.name] = ConnectorWork(
                        config=config_of(connector),
                        subscription_id=connector.subscription_id,
                        tokens=StoredTokens(connector.token_state),
                    )
                found.messages.append(
                    Claimed(
                        message_id=row.id,
                        claim_token=token,
                        subscription_id=row.subscription_id,
                        event_type=row.event_type,
                        lead_id=row.lead_id,
                        payload=dict(row.payload or {}),
                    )
                )
            for item in works.values():
                lead_ids = {m.lead_id for m in item.messages if m.lead_id}
                leads = session.scalars(select(Lead).where(Lead.id.in_(lead_ids)))
                item.snapshots = {lead.id: snapshot_of(lead) for lead in leads}
                records = crm_repo.records_for_leads(session, item.config.name, lead_ids)
                item.known = {
                    lead_id: RecordRef(r.object_type, r.record_id) for lead_id, r in records.items()
                }
            return list(works.values())

        return in_transaction(self.session_factory, work)

    # -- send --------------------------------------------------------------------------------

    async def send(self, item: ConnectorWork, http: httpx.AsyncClient) -> ConnectorResult:
        """One connector's messages of the round. Never raises: whatever goes wrong building
        or calling the connector is a failed attempt on its messages (retried per schedule),
        so one connector's fault neither stops the loop nor loses the other connectors'
        results of the round."""
        result = ConnectorResult(
            name=item.config.name, subscription_id=item.subscription_id, tokens=item.tokens
        )
        try:
            connector = open_connector(item.config, http, item.tokens)
        except Exception as exc:
            if isinstance(exc, LeadscoreError):
                error = CrmError(exc.detail, permanent=False)
            else:
                log.exception("crm %s: the connector could not be built", item.config.name)
                error = CrmError(f"the connector could not be built: {describe(exc)}")
            result.outcomes = [Outcome(m, utcnow(), error=error) for m in item.messages]
            return result
        try:
            await _Round(self, connector, item, result).run()
        except Exception as exc:
            log.exception("crm %s: round failed", item.config.name)
            handled = {o.claimed.message_id for o in result.outcomes}
            error = as_crm_error(exc)
            result.outcomes.extend(
                Outcome(m, utcnow(), error=error)
                for m in item.messages
                if m.message_id not in handled
            )
        return result

    async def send_all(self, works: Sequence[ConnectorWork]) -> list[ConnectorResult]:
        async with guarded_client(
            allow_private=self.options.allow_private_targets,
            timeout=self.options.timeout_seconds,
        ) as http:
            return list(await asyncio.gather(*(self.send(w, http) for w in works)))

    # -- record ------------------------------------------------------------------------------

    def record(self, results: Sequence[ConnectorResult]) -> None:
        if not results:
            return

        def work(session: Session) -> None:
            now = utcnow()
            ids = [o.claimed.message_id for r in results for o in r.outcomes]
            messages = outbox.by_ids(session, ids)
            for result in results:
                for outcome in result.outcomes:
                    message = messages.get(outcome.claimed.message_id)
                    if message is not None:
                        self._apply(session, message, outcome, now)
                for lead_id, ref in result.records.items():
                    if _lead_exists(session, lead_id):
                        crm_repo.upsert_record(
                            session,
                            connector=result.name,
                            lead_id=lead_id,
                            object_type=ref.object_type,
                            record_id=ref.record_id,
                            now=now,
                        )
                if result.tokens is not None and result.tokens.changed:
                    crm_repo.save_token_state(session, result.name, result.tokens.values)
                if result.rate_limited is not None:
                    until = now + timedelta(seconds=result.rate_limited)
                    moved = crm_repo.push_back(session, result.subscription_id, until)
                    log.warning(
                        "crm %s rate limited: %d pending messages wait %.0f s",
                        result.name,
                        moved,
                        result.rate_limited,
                    )
            session.flush()

        in_transaction(self.session_factory, work)

    def _apply(
        self, session: Session, message: OutboxMessage, outcome: Outcome, now: datetime
    ) -> None:
        error = outcome.error
        outbox.add_attempt(
            session,
            DeliveryAttempt(
                message_id=message.id,
                subscription_id=message.subscription_id,
                attempted_at=outcome.attempted_at,
                duration_ms=round(outcome.duration_ms, 3),
                status_code=error.status if error is not None else None,
                success=error is None,
                error=describe(error) if error is not None else outcome.note,
                response_body=None,
            ),
        )
        if message.claim_token != outcome.claimed.claim_token:
            log.info("message %s changed while in flight", message.id)
            return
        message.attempts += 1
        message.last_attempt_at = outcome.attempted_at
        message.last_status = error.status if error is not None else None
        message.claim_token = None
        if error is None:
            message.schedule_attempts += 1
            message.status = STATUS_DELIVERED
            message.delivered_at = now
            message.next_attempt_at = None
            message.last_error = outcome.note
            return
        message.last_error = str(error) or type(error).__name__
        if outcome.rate_limited is not None:
            # "Not now": waits, but does not count toward the dead letter.
            message.next_attempt_at = now + timedelta(seconds=outcome.rate_limited)
            return
        message.schedule_attempts += 1
        delay = None
        if not error.permanent:
            delay = next_delay(
                message.schedule_attempts, self.options.retry_delays, retry_after=error.retry_after
            )
        if delay is None:
            message.status = STATUS_FAILED
            message.next_attempt_at = None
            if self.dead_letters is not None:
                self.dead_letters.inc()
            log.warning("crm message %s failed: %s", message.id, message.last_error)
        else:
            message.next_attempt_at = now + timedelta(seconds=delay)

    # -- loop --------------------------------------------------------------------------------

    async def run_once(self) -> int:
        works = await asyncio.to_thread(self.claim)
        if not works:
            return 0
        results = await self.send_all(works)
        await asyncio.to_thread(self.record, results)
        return sum(len(w.messages) for w in works)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()

        def nudge() -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake.set)

        if self.options.wake_on_commit:
            outbox.add_wake_listener(nudge)
        backoff = self.options.poll_seconds
        try:
            while not stop.is_set():
                try:
                    done = await self.run_once()
                    backoff = self.options.poll_seconds
                except Exception:
                    log.exception("crm round failed; retrying in %.1f s", backoff)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                if done >= self.options.batch_size:
                    continue
                self._wake.clear()
                waiters = [
                    asyncio.ensure_future(stop.wait()),
                    asyncio.ensure_future(self._wake.wait()),
                ]
                try:
                    await asyncio.wait(
                        waiters,
                        timeout=self.options.poll_seconds,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    for waiter in waiters:
                        waiter.cancel()
        finally:
            outbox.remove_wake_listener(nudge)


def _lead_exists(session: Session, lead_id: str) -> bool:
    return session.get(Lead, lead_id) is not None


def _claim_due(
    session: Session, *, now: datetime, limit: int, token: str, until: datetime
) -> list[OutboxMessage]:
    """Lease due ``crm.*`` messages of enabled connectors, oldest first."""
    query = (
        select(OutboxMessage.id)
        .join(Subscription, Subscription.id == OutboxMessage.subscription_id)
        .where(
            OutboxMessage.status == STATUS_PENDING,
            OutboxMessage.next_attempt_at <= now,
            OutboxMessage.event_type.like(f"{CRM_PREFIX}%"),
            Subscription.enabled.is_(True),
        )
        .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True, of=OutboxMessage)
    ids = list(session.scalars(query))
    if not ids:
        return []
    session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.id.in_(ids),
            OutboxMessage.status == STATUS_PENDING,
            OutboxMessage.next_attempt_at <= now,
        )
        .values(claim_token=token, next_attempt_at=until)
        .execution_options(synchronize_session=False)
    )
    query_claimed = (
        select(OutboxMessage)
        .where(OutboxMessage.claim_token == token)
        .order_by(OutboxMessage.created_at, OutboxMessage.id)
    )
    return list(session.scalars(query_claimed))


class _Round:
    """One connector's messages of one round, in order: erasures, merges, syncs, tasks."""

    def __init__(
        self,
        dispatcher: CrmDispatcher,
        connector: Connector,
        item: ConnectorWork,
        result: ConnectorResult,
    ) -> None:
        self.dispatcher = dispatcher
        self.connector = connector
        self.item = item
        self.result = result
        self.known = dict(item.known)

    async def call(self, coroutine: Any) -> Any:
        return await asyncio.wait_for(coroutine, timeout=self.dispatcher.options.timeout_seconds)

    def done(self, claimed: Claimed, started: float, at: datetime, **values: Any) -> None:
        duration = (time.perf_counter() - started) * 1000.0
        self.result.outcomes.append(Outcome(claimed, at, duration_ms=duration, **values))

    async def run(self) -> None:
        by_type: dict[str, list[Claimed]] = defaultdict(list)
        for message in self.item.messages:
            by_type[message.event_type].append(message)
        unknown = [m for t, ms in by_type.items() if t not in CRM_TYPES for m in ms]
        for message in unknown:
            self.done(
                message,
                time.perf_counter(),
                utcnow(),
                error=CrmError(f"unknown CRM message type {message.event_type}", permanent=True),
            )
        steps = (
            (ERASE, self.erase),
            (MERGE, self.merge),
            (SYNC, self.syncs),
            (TASK, self.tasks),
        )
        try:
            for kind, step in steps:
                if by_type.get(kind):
                    await self.step(step, by_type[kind])
        except _Limited as limited:
            self.result.rate_limited = limited.seconds
            handled = {o.claimed.message_id for o in self.result.outcomes}
            error = limited.error
            for message in self.item.messages:
                if message.message_id not in handled:
                    self.done(
                        message,
                        time.perf_counter(),
                        utcnow(),
                        error=error,
                        rate_limited=limited.seconds,
                    )

    async def step(self, step: Any, messages: list[Claimed]) -> None:
        """One kind of message; a fault outside the connector calls (a malformed payload) is
        a failed attempt on the step's messages not settled yet, and the next steps still go."""
        started, at = time.perf_counter(), utcnow()
        try:
            await step(messages)
        except _Limited:
            raise
        except Exception as exc:
            log.exception("crm %s: %s failed", self.item.config.name, messages[0].event_type)
            handled = {o.claimed.message_id for o in self.result.outcomes}
            error = as_crm_error(exc)
            for message in messages:
                if message.message_id not in handled:
                    self.done(message, started, at, error=error)

    async def guarded(self, messages: Sequence[Claimed], coroutine: Any) -> tuple[bool, Any]:
        """Run one connector call for ``messages``; record their failure; raise on a limit."""
        started, at = time.perf_counter(), utcnow()
        try:
            return True, await self.call(coroutine)
        except CrmRateLimited as exc:
            seconds = float(exc.retry_after if exc.retry_after is not None else 60.0)
            raise _Limited(seconds, exc) from None
        except Exception as exc:
            error = as_crm_error(exc)
            if not isinstance(exc, CrmError | UnsafeTargetError | httpx.HTTPError | TimeoutError):
                log.exception("crm %s: connector call failed", self.item.config.name)
            for message in messages:
                self.done(message, started, at, error=error)
            return False, None

    async def erase(self, messages: list[Claimed]) -> None:
        for message in messages:
            started, at = time.perf_counter(), utcnow()
            ok, _ = await self.guarded(
                [message], self.connector.erase(ref_of(message.payload["record"]))
            )
            if ok:
                self.done(message, started, at)

    async def merge(self, messages: list[Claimed]) -> None:
        for message in messages:
            started, at = time.perf_counter(), utcnow()
            survivor = ref_of(message.payload["survivor"])
            merged = ref_of(message.payload["merged"])
            ok, ref = await self.guarded([message], self.connector.merge(survivor, merged))
            if ok:
                lead_id = message.lead_id or str(message.payload.get("lead_id"))
                self.known[lead_id] = ref
                self.result.records[lead_id] = ref
                self.done(message, started, at)

    async def pushed(
        self, messages: Sequence[Claimed], snapshots: Sequence[LeadSnapshot]
    ) -> tuple[dict[str, RecordRef], dict[str, CrmError]] | None:
        """One push call: keeps the record of every lead written and returns them with the
        error of each lead that was not (refused for good: its ``last_push_errors`` message,
        permanent; failed for now in a ``CrmPartialFailure``: retryable). None when the call
        failed as a whole; ``messages`` are then recorded as failed already."""
        known = {s.lead_id: self.known[s.lead_id] for s in snapshots if s.lead_id in self.known}
        self.connector.last_push_errors = {}
        partial: list[CrmPartialFailure] = []

        async def call() -> dict[str, RecordRef]:
            try:
                return await self.connector.push(list(snapshots), known)
            except CrmPartialFailure as exc:
                partial.append(exc)
                return dict(exc.written)

        ok, refs = await self.guarded(messages, call())
        if not ok:
            return None
        written: dict[str, RecordRef] = dict(refs or {})
        for lead_id, ref in written.items():
            self.known[lead_id] = ref
            self.result.records[lead_id] = ref
        errors: dict[str, CrmError] = {
            lead_id: CrmError(message, permanent=True)
            for lead_id, message in self.connector.last_push_errors.items()
            if lead_id not in written
        }
        for failure in partial:
            for snapshot in snapshots:
                if snapshot.lead_id in written or snapshot.lead_id in errors:
                    continue
                errors[snapshot.lead_id] = CrmError(
                    failure.failed.get(snapshot.lead_id) or str(failure),
                    status=failure.status,
                    retry_after=failure.retry_after,
                )
        return written, errors

    async def push(self, messages: Sequence[Claimed], snapshots: Sequence[LeadSnapshot]) -> bool:
        started, at = time.perf_counter(), utcnow()
        pushed = await self.pushed(messages, snapshots)
        if pushed is None:
            return False
        written, errors = pushed
        for message in messages:
            error = errors.get(message.lead_id or "")
            if error is not None:
                self.done(message, started, at, error=error)
                continue
            note = None
            if message.lead_id not in written:
                note = "no CRM record: none matched the lead and create_missing is off"
            self.done(message, started, at, note=note)
        return True

    async def syncs(self, messages: list[Claimed]) -> None:
        by_lead: dict[str, list[Claimed]] = defaultdict(list)
        for message in messages:
            by_lead[message.lead_id or ""].append(message)
        gone = [lead_id for lead_id in by_lead if lead_id not in self.item.snapshots]
        for lead_id in gone:
            for message in by_lead.pop(lead_id):
                self.done(message, time.perf_counter(), utcnow(), note="the lead no longer exists")
        lead_ids = list(by_lead)
        size = max(1, self.connector.max_batch)
        for start in range(0, len(lead_ids), size):
            chunk = lead_ids[start : start + size]
            await self.push(
                [m for lead_id in chunk for m in by_lead[lead_id]],
                [self.item.snapshots[lead_id] for lead_id in chunk],
            )

    async def tasks(self, messages: list[Claimed]) -> None:
        for message in messages:
            lead_id = message.lead_id or ""
            snapshot = self.item.snapshots.get(lead_id)
            if snapshot is None:
                self.done(message, time.perf_counter(), utcnow(), note="the lead no longer exists")
                continue
            if lead_id not in self.known:
                started, at = time.perf_counter(), utcnow()
                pushed = await self.pushed([message], [snapshot])
                if pushed is None:
                    continue
                refused = pushed[1].get(lead_id)
                if refused is not None:
                    self.done(message, started, at, error=refused)
                    continue
            record = self.known.get(lead_id)
            if record is None:
                self.done(
                    message,
                    time.perf_counter(),
                    utcnow(),
                    error=CrmError(
                        "no CRM record for the lead: none matched its email and create_missing is off",
                        permanent=True,
                    ),
                )
                continue
            payload = message.payload
            task = HandoverTask(
                lead_id=lead_id,
                owner=payload.get("owner"),
                subject=str(payload.get("subject") or "Contact the lead"),
                body=str(payload.get("body") or ""),
                due_at=datetime.fromisoformat(str(payload["due_at"]).replace("Z", "+00:00")),
            )
            started, at = time.perf_counter(), utcnow()
            ok, _ = await self.guarded([message], self.connector.create_task(task, record))
            if ok:
                self.done(message, started, at)


class _Limited(Exception):
    def __init__(self, seconds: float, error: CrmError) -> None:
        super().__init__(str(error))
        self.seconds = seconds
        self.error = error
