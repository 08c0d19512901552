"""The delivery worker: claim due outbox rows, send them signed, record every attempt, reschedule.

A round has three steps, so that no database transaction is held open while waiting for a
receiver:

1. **Claim** (one short transaction): pick due ``pending`` rows of enabled subscriptions — with
   ``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL, so concurrent workers pick disjoint rows —
   then stamp them with a fresh ``claim_token`` and push ``next_attempt_at`` past the send
   deadline (a lease). The stamp is a compare-and-set on ``next_attempt_at``, which keeps even two
   SQLite workers from taking one row (one SQLite worker is still what we document).
2. **Send** concurrently with httpx: ``follow_redirects=False``, a hard per-attempt deadline, the
   SSRF check against freshly resolved addresses, the Standard Webhooks headers.
3. **Record** (one transaction): one ``delivery_attempts`` row per attempt, the message's new
   status and next time, the subscription's failure clock; only rows still carrying our claim
   token are touched.

A worker that dies between 1 and 3 leaves its rows leased; they become due again when the lease
expires and another worker sends them with the same ``webhook-id`` (at least once).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy.orm import Session, sessionmaker

from leadscore_api import __version__, logs
from leadscore_api.config import Settings
from leadscore_api.delivery.crm import CrmDispatcher, CrmOptions
from leadscore_api.delivery.schedule import next_delay
from leadscore_api.delivery.signer import canonical_body, signature_headers
from leadscore_api.delivery.ssrf import UnsafeTargetError, checked_target
from leadscore_api.retry_after import retry_after_seconds
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.delivery_models import (
    STATUS_DELIVERED,
    STATUS_FAILED,
    DeliveryAttempt,
    OutboxMessage,
    Subscription,
)
from leadscore_api.storage.ids import new_id
from leadscore_api.storage.repositories import outbox
from leadscore_api.storage.repositories import subscriptions as subscriptions_repo
from leadscore_api.storage.unit_of_work import in_transaction

log = logging.getLogger("leadscore.delivery")

#: Bytes of a receiver's answer kept with the attempt (enough to read an error page's gist).
RESPONSE_LIMIT = 2048
#: A lease outlives the send deadline by this much, so a live worker always records first.
LEASE_MARGIN_SECONDS = 10.0


class DeliveryMetrics:
    """The worker's Prometheus series, in the registry of the process that exposes them.

    ``leadscore serve`` passes the application's registry so ``/metrics`` shows them;
    ``leadscore worker --metrics-port`` serves its own.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.attempts = Counter(
            "leadscore_webhook_attempts_total",
            "Outbound webhook attempts by outcome (success, failure).",
            ["outcome"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "leadscore_webhook_dead_letters_total",
            "Messages marked failed after their retry schedule was used up.",
            registry=self.registry,
        )
        self.disabled = Counter(
            "leadscore_webhook_endpoints_disabled_total",
            "Subscriptions disabled by the worker (410 Gone, or failing for days).",
            ["reason"],
            registry=self.registry,
        )
        self.attempt_seconds = Histogram(
            "leadscore_webhook_attempt_seconds",
            "Duration of outbound webhook attempts.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )


@dataclass(frozen=True)
class Claimed:
    """What a worker needs to send one message, copied out of the claim transaction."""

    message_id: str
    claim_token: str
    subscription_id: str
    url: str
    secrets: tuple[str, ...]
    body: str


@dataclass
class AttemptResult:
    """The outcome of one HTTP attempt."""

    claimed: Claimed
    attempted_at: datetime
    duration_ms: float
    status_code: int | None = None
    error: str | None = None
    response_body: str | None = None
    retry_after: float | None = None

    @property
    def success(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass
class WorkerOptions:
    """Knobs of one worker, from :class:`Settings` unless a test or bench says otherwise."""

    allow_private_targets: bool = False
    retry_delays: tuple[float, ...] = (0.0,)
    timeout_seconds: float = 15.0
    disable_after_days: float = 5.0
    poll_seconds: float = 0.5
    batch_size: int = 100
    #: Requests in flight per worker; more is slower on loopback (httpx pool and receiver
    #: overhead) and faster only against distant receivers.
    concurrency: int = 16
    lease_margin_seconds: float = LEASE_MARGIN_SECONDS
    #: Deliver as soon as a transaction of this process commits messages (else: poll only).
    wake_on_commit: bool = True
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> WorkerOptions:
        values: dict[str, Any] = {
            "allow_private_targets": settings.webhook_allow_private_targets,
            "retry_delays": settings.retry_delays(),
            "timeout_seconds": settings.delivery_timeout_seconds,
            "disable_after_days": settings.delivery_disable_after_days,
            "poll_seconds": settings.worker_poll_seconds,
        }
        values.update(overrides)
        return cls(**values)


def _signing_secrets(subscription: Subscription, now: datetime) -> tuple[str, ...]:
    """The new secret first, then the previous one while its overlap lasts."""
    secrets_ = [subscription.secret]
    expires = subscription.previous_secret_expires_at
    if subscription.previous_secret and expires is not None and expires > now:
        secrets_.append(subscription.previous_secret)
    return tuple(secrets_)


class DeliveryWorker:
    """Sends outbox messages; run several, in one process or many, against one database."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        options: WorkerOptions,
        *,
        name: str | None = None,
        metrics: DeliveryMetrics | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.options = options
        self.metrics = metrics if metrics is not None else DeliveryMetrics()
        self.name = name or f"{socket.gethostname()}-{new_id('wrk')[-8:]}"
        self._wake = asyncio.Event()
        self._client: httpx.AsyncClient | None = None

    # -- claim -------------------------------------------------------------------------------

    def claim(self, limit: int | None = None) -> list[Claimed]:
        """Lease up to ``limit`` due messages to this worker (one short transaction)."""
        limit = limit or self.options.batch_size
        token = new_id("clm")

        def work(session: Session) -> list[Claimed]:
            now = utcnow()
            lease_seconds = self.options.timeout_seconds + self.options.lease_margin_seconds
            leased = outbox.claim_due(
                session,
                now=now,
                limit=limit,
                token=token,
                lease_until=now + timedelta(seconds=lease_seconds),
            )
            return [
                Claimed(
                    message_id=message_id,
                    claim_token=token,
                    subscription_id=sub.id,
                    url=sub.url,
                    secrets=_signing_secrets(sub, now),
                    body=canonical_body(payload),
                )
                for message_id, payload, sub in leased
            ]

        return in_transaction(self.session_factory, work)

    # -- send --------------------------------------------------------------------------------

    def _new_client(self) -> httpx.AsyncClient:
        limits = httpx.Limits(
            max_connections=self.options.concurrency,
            max_keepalive_connections=self.options.concurrency,
        )
        return httpx.AsyncClient(
            follow_redirects=False,
            timeout=httpx.Timeout(self.options.timeout_seconds),
            limits=limits,
            trust_env=False,
        )

    async def _post(
        self, client: httpx.AsyncClient, claimed: Claimed, result: AttemptResult
    ) -> None:
        target = await checked_target(claimed.url, allow_private=self.options.allow_private_targets)
        headers = {
            "content-type": "application/json",
            "user-agent": f"leadscore-webhooks/{__version__}",
            "host": target.host_header,
            **signature_headers(
                claimed.message_id, claimed.body, claimed.secrets, int(time.time())
            ),
        }
        extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else None
        request = client.build_request(
            "POST",
            target.url,
            content=claimed.body.encode("utf-8"),
            headers=headers,
            extensions=extensions,
        )
        if target.auth is not None:
            user, password = target.auth
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            request.headers["authorization"] = f"Basic {token}"
        response = await client.send(request, stream=True)
        try:
            result.status_code = response.status_code
            result.retry_after = retry_after_seconds(
                response.headers.get("retry-after"), result.attempted_at
            )
            kept = bytearray()
            async for chunk in response.aiter_raw():
                kept.extend(chunk[: RESPONSE_LIMIT - len(kept)])
                if len(kept) >= RESPONSE_LIMIT:
                    break
            result.response_body = kept.decode("utf-8", errors="replace")
        finally:
            await response.aclose()

    async def send(self, claimed: Claimed, client: httpx.AsyncClient) -> AttemptResult:
        """One attempt, never raising: network and SSRF problems become the attempt's error."""
        result = AttemptResult(claimed=claimed, attempted_at=utcnow(), duration_ms=0.0)
        started = time.perf_counter()
        try:
            await asyncio.wait_for(
                self._post(client, claimed, result), timeout=self.options.timeout_seconds
            )
        except UnsafeTargetError as exc:
            result.error = f"target refused: {exc}"
        except TimeoutError:
            result.error = f"timed out after {self.options.timeout_seconds:g} s"
        except httpx.HTTPError as exc:
            result.error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        except OSError as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        result.duration_ms = (time.perf_counter() - started) * 1000.0
        self.metrics.attempt_seconds.observe(result.duration_ms / 1000.0)
        self.metrics.attempts.labels("success" if result.success else "failure").inc()
        return result

    async def send_all(self, batch: Sequence[Claimed]) -> list[AttemptResult]:
        """Send a batch with at most ``concurrency`` requests in flight."""
        client = self._client or self._new_client()
        semaphore = asyncio.Semaphore(self.options.concurrency)

        async def one(claimed: Claimed) -> AttemptResult:
            async with semaphore:
                return await self.send(claimed, client)

        try:
            return list(await asyncio.gather(*(one(c) for c in batch)))
        finally:
            if self._client is None:
                await client.aclose()

    # -- record ------------------------------------------------------------------------------

    def record(self, results: Sequence[AttemptResult]) -> None:
        """Store the attempts and move each message on (one transaction for the batch)."""
        if not results:
            return

        def work(session: Session) -> None:
            now = utcnow()
            messages = outbox.by_ids(session, [r.claimed.message_id for r in results])
            subscriptions = subscriptions_repo.by_ids(
                session, {r.claimed.subscription_id for r in results}
            )
            for result in results:
                claimed = result.claimed
                message = messages.get(claimed.message_id)
                if message is None:
                    continue  # deleted with its subscription while in flight
                outbox.add_attempt(
                    session,
                    DeliveryAttempt(
                        message_id=claimed.message_id,
                        subscription_id=claimed.subscription_id,
                        attempted_at=result.attempted_at,
                        duration_ms=round(result.duration_ms, 3),
                        status_code=result.status_code,
                        success=result.success,
                        error=result.error,
                        response_body=result.response_body,
                    ),
                )
                if message.claim_token != claimed.claim_token:
                    # Retried or replayed through the API while in flight: the attempt is on
                    # record, but the API's decision about what happens next stands.
                    log.info("message %s changed while in flight", claimed.message_id)
                    continue
                self._apply(message, subscriptions.get(claimed.subscription_id), result, now)
            session.flush()

        in_transaction(self.session_factory, work)

    def _apply(
        self,
        message: OutboxMessage,
        sub: Subscription | None,
        result: AttemptResult,
        now: datetime,
    ) -> None:
        message.attempts += 1
        message.schedule_attempts += 1
        message.last_attempt_at = result.attempted_at
        message.last_status = result.status_code
        message.claim_token = None
        if result.success:
            message.status = STATUS_DELIVERED
            message.delivered_at = now
            message.next_attempt_at = None
            message.last_error = None
            if sub is not None and sub.failing_since is not None:
                sub.failing_since = None
            return
        message.last_error = result.error or f"HTTP {result.status_code}"
        delay = next_delay(
            message.schedule_attempts,
            self.options.retry_delays,
            retry_after=result.retry_after,
            rng=self.options.rng,
        )
        if delay is None:
            message.status = STATUS_FAILED
            message.next_attempt_at = None
            self.metrics.dead_letters.inc()
            log.warning(
                "message %s failed after %d attempts: %s",
                message.id,
                message.schedule_attempts,
                message.last_error,
            )
        else:
            message.next_attempt_at = now + timedelta(seconds=delay)
        if sub is None or not sub.enabled:
            return
        if sub.failing_since is None:
            sub.failing_since = result.attempted_at
        if result.status_code == 410:
            self._disable(sub, "the endpoint answered 410 Gone", now, "gone")
        elif now - sub.failing_since >= timedelta(days=self.options.disable_after_days):
            since = sub.failing_since.isoformat().replace("+00:00", "Z")
            self._disable(sub, f"every delivery has failed since {since}", now, "failing")

    def _disable(self, sub: Subscription, reason: str, now: datetime, label: str) -> None:
        sub.enabled = False
        sub.disabled_reason = reason
        sub.disabled_at = now
        self.metrics.disabled.labels(label).inc()
        # Never the whole URL: it may carry user:password@ or a token in its query.
        log.warning("subscription %s (%s) disabled: %s", sub.id, logs.safe_url(sub.url), reason)

    # -- loop --------------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim one batch, send it, record it; return how many messages were attempted."""
        batch = await asyncio.to_thread(self.claim)
        if not batch:
            return 0
        results = await self.send_all(batch)
        await asyncio.to_thread(self.record, results)
        return len(batch)

    def wake(self) -> None:
        """Ask the loop to look for work now (thread-safe once the loop runs)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; errors (database down…) are logged and retried."""
        loop = asyncio.get_running_loop()

        def nudge() -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake.set)

        if self.options.wake_on_commit:
            outbox.add_wake_listener(nudge)
        self._client = self._new_client()
        backoff = self.options.poll_seconds
        try:
            while not stop.is_set():
                try:
                    done = await self.run_once()
                    backoff = self.options.poll_seconds
                except Exception:
                    log.exception("delivery round failed; retrying in %.1f s", backoff)
                    done = 0
                    await _sleep_or(stop, backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                if done >= self.options.batch_size:
                    continue
                self._wake.clear()
                await _wait_any(stop, self._wake, self.options.poll_seconds)
        finally:
            outbox.remove_wake_listener(nudge)
            await self._client.aclose()
            self._client = None


async def _sleep_or(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event, seconds: float) -> None:
    """Sleep up to ``seconds``, waking early when ``stop`` or ``wake`` is set."""
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


TimerTick = Callable[[sessionmaker[Session], datetime], int]


@contextlib.asynccontextmanager
async def running_workers(
    session_factory: sessionmaker[Session],
    settings: Settings,
    *,
    timer_tick: TimerTick | None = None,
    registry: CollectorRegistry | None = None,
    **overrides: Any,
) -> AsyncIterator[DeliveryWorker]:
    """Run the delivery loop, the CRM dispatcher (``delivery/crm.py``) and the timer loop (when
    given) for the duration of the block.

    This is what ``leadscore serve`` enters in its lifespan when ``LEADSCORE_RUN_WORKER`` is
    true, and what ``leadscore worker`` runs alone. On exit the current round is allowed to
    finish within the send deadline; rows still leased then are sent again after their lease.
    """
    worker = DeliveryWorker(
        session_factory,
        WorkerOptions.from_settings(settings, **overrides),
        metrics=DeliveryMetrics(registry),
    )
    stop = asyncio.Event()
    crm = CrmDispatcher(
        session_factory,
        CrmOptions(
            allow_private_targets=worker.options.allow_private_targets,
            retry_delays=worker.options.retry_delays,
            timeout_seconds=worker.options.timeout_seconds,
            poll_seconds=worker.options.poll_seconds,
            wake_on_commit=worker.options.wake_on_commit,
        ),
        dead_letters=worker.metrics.dead_letters,
    )
    tasks = [
        asyncio.create_task(worker.run(stop), name="leadscore-delivery"),
        asyncio.create_task(crm.run(stop), name="leadscore-crm"),
    ]
    if timer_tick is not None:
        tasks.append(
            asyncio.create_task(
                run_timer(session_factory, timer_tick, settings.timer_interval_seconds, stop),
                name="leadscore-timer",
            )
        )
    try:
        yield worker
    finally:
        stop.set()
        _, pending = await asyncio.wait(tasks, timeout=settings.delivery_timeout_seconds + 5)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def run_timer(
    session_factory: sessionmaker[Session],
    tick: TimerTick,
    interval: float,
    stop: asyncio.Event,
) -> None:
    """Call ``tick(session_factory, now)`` every ``interval`` seconds until ``stop`` is set.

    ``tick`` finds leads whose SLA or re-qualification time has passed and enqueues their
    time-driven transitions (:mod:`leadscore_api.service.timers`).
    """
    while not stop.is_set():
        try:
            count = await asyncio.to_thread(tick, session_factory, utcnow())
            if count:
                log.info("timer enqueued %d time-driven transitions", count)
        except Exception:
            log.exception("timer round failed")
        await _sleep_or(stop, interval)
