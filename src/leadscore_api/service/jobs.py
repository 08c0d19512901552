"""Background jobs: created by a request, run by ``serve``, ``worker`` or the CLI, resumable.

A job row is claimed with a lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so several
replicas and workers share the open jobs and each runs on one of them at a time; the lease is
renewed by every chunk, and a worker that died leaves a job another takes over once the lease
has run out. ``leadscore rules rescore`` takes a job over at once: the operator says the
previous runner is gone, and each chunk checks under the job row's lock that it still holds
the lease, so two runners never apply the same chunk.

The only kind today is ``rescore`` (:mod:`leadscore_api.service.rescore`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.errors import NotFound
from leadscore_api.service.rescore import LEASE, LeaseLost, rescore_chunk
from leadscore_api.service.rulesets import RulesetRegistry
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.ids import new_id
from leadscore_api.storage.lifecycle_models import (
    JOB_DONE,
    JOB_FAILED,
    JOB_OPEN,
    JOB_QUEUED,
    JOB_RUNNING,
    Job,
)
from leadscore_api.storage.repositories import jobs as jobs_repo
from leadscore_api.storage.unit_of_work import in_transaction

log = logging.getLogger("leadscore.jobs")

KIND_RESCORE = "rescore"
#: Leads per transaction: small enough to keep row locks short, large enough to be fast.
DEFAULT_CHUNK = 200


@dataclass(frozen=True)
class JobView:
    id: str
    kind: str
    status: str
    done: int
    total: int | None
    cursor: str | None
    params: dict[str, Any]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> JobView:
        return cls(
            id=job.id,
            kind=job.kind,
            status=job.status,
            done=job.done,
            total=job.total,
            cursor=job.cursor,
            params=dict(job.params or {}),
            error=job.error,
            created_at=job.created_at,
            started_at=job.started_at,
            updated_at=job.updated_at,
            finished_at=job.finished_at,
        )

    @property
    def finished(self) -> bool:
        return self.status not in JOB_OPEN


def worker_name() -> str:
    """Who holds a lease: host, process and a random part (a pid can be reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def create_rescore(session: Session, *, emit_webhooks: bool = False, reason: str = "") -> JobView:
    """Queue a re-score of every lead; an open re-score is replaced (it would redo the same)."""
    now = utcnow()
    job_id = new_id("job")
    jobs_repo.cancel_open(session, KIND_RESCORE, f"replaced by {job_id}", now)
    job = jobs_repo.add(
        session,
        Job(
            id=job_id,
            kind=KIND_RESCORE,
            status=JOB_QUEUED,
            done=0,
            total=jobs_repo.count_leads(session),
            params={"emit_webhooks": emit_webhooks, "reason": reason},
            created_at=now,
            updated_at=now,
        ),
    )
    return JobView.of(job)


def get_job(session: Session, job_id: str) -> JobView:
    job = jobs_repo.get(session, job_id)
    if job is None:
        raise NotFound(f"no job with id {job_id!r}")
    return JobView.of(job)


def list_jobs(session: Session, limit: int = 50) -> list[JobView]:
    return [JobView.of(job) for job in jobs_repo.recent(session, limit)]


def open_rescore(session: Session) -> JobView | None:
    """The oldest unfinished re-score, if any (what ``leadscore rules rescore`` continues)."""
    found = jobs_repo.open_jobs(session, KIND_RESCORE)
    return JobView.of(found[0]) if found else None


def claim(
    session_factory: sessionmaker[Session], owner: str, job_id: str | None = None
) -> JobView | None:
    """Lease the oldest free open job (or ``job_id``, even if leased: a takeover)."""

    def work(session: Session) -> JobView | None:
        now = utcnow()
        job = jobs_repo.claimable(session, now, job_id)
        if job is None:
            return None
        job.status = JOB_RUNNING
        job.lease_owner = owner
        job.lease_until = now + LEASE
        job.started_at = job.started_at or now
        job.updated_at = now
        return JobView.of(job)

    return in_transaction(session_factory, work)


ProgressCallback = Callable[[JobView], None]


def run_job(
    session_factory: sessionmaker[Session],
    registry: RulesetRegistry,
    job: JobView,
    owner: str,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    pause: float = 0.0,
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> JobView:
    """Work on a claimed job chunk by chunk until it is done, taken over, or asked to stop.

    Each chunk scores with the rulesets active in the database when it starts, so a job that
    outlives another activation finishes under the newest versions.
    """
    view = job
    while not view.finished and not should_stop():

        def chunk(session: Session) -> JobView:
            return JobView.of(
                rescore_chunk(
                    session, registry.current_in(session), job.id, owner, chunk_size, utcnow()
                )
            )

        try:
            view = in_transaction(session_factory, chunk)
        except LeaseLost:
            log.info("job %s: lease lost (taken over, finished or replaced); stopping", job.id)
            with session_factory() as session:
                return get_job(session, job.id)
        except Exception as exc:
            log.exception("job %s failed", job.id)
            return _fail(session_factory, job.id, owner, exc)
        if on_progress is not None:
            on_progress(view)
        if pause and not view.finished:
            time.sleep(pause)
    return view


def _fail(
    session_factory: sessionmaker[Session], job_id: str, owner: str, exc: Exception
) -> JobView:
    def work(session: Session) -> JobView:
        job = jobs_repo.lock(session, job_id)
        assert job is not None
        if job.lease_owner == owner and job.status in JOB_OPEN:
            now = utcnow()
            job.status = JOB_FAILED
            job.error = f"{type(exc).__name__}: {exc}"[:2000]
            job.finished_at = now
            job.updated_at = now
            job.lease_owner = None
            job.lease_until = None
        return JobView.of(job)

    return in_transaction(session_factory, work)


def run_next(
    session_factory: sessionmaker[Session],
    registry: RulesetRegistry,
    owner: str,
    should_stop: Callable[[], bool] = lambda: False,
) -> JobView | None:
    """Claim and run the oldest free job; None when there was none."""
    job = claim(session_factory, owner)
    if job is None:
        return None
    log.info("job %s (%s): started at %d/%s", job.id, job.kind, job.done, job.total)
    view = run_job(session_factory, registry, job, owner, should_stop=should_stop)
    log.info("job %s: %s at %d/%s", view.id, view.status, view.done, view.total)
    return view


async def run_jobs(
    session_factory: sessionmaker[Session],
    registry: RulesetRegistry,
    poll_seconds: float,
    stop: asyncio.Event,
) -> None:
    """Look for jobs every ``poll_seconds`` and run them in a thread until ``stop`` is set."""
    owner = worker_name()
    while not stop.is_set():
        try:
            ran = await asyncio.to_thread(run_next, session_factory, registry, owner, stop.is_set)
        except Exception:
            log.exception("job round failed")
            ran = None
        if ran is None or ran.status != JOB_DONE:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=poll_seconds)


@contextlib.asynccontextmanager
async def running_jobs(
    session_factory: sessionmaker[Session], registry: RulesetRegistry, poll_seconds: float
) -> AsyncIterator[None]:
    """Run the job loop for the duration of the block; on exit the current chunk finishes."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_jobs(session_factory, registry, poll_seconds, stop), name="leadscore-jobs"
    )
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task
