"""SQL of ``jobs`` (background work with a lease and a cursor) and the lead walk a re-score does."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from leadscore_api.storage.lifecycle_models import JOB_CANCELLED, JOB_OPEN, Job
from leadscore_api.storage.repositories.leads import LEADS_TABLE


def _postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def add(session: Session, job: Job) -> Job:
    session.add(job)
    session.flush()
    return job


def get(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id)


def lock(session: Session, job_id: str) -> Job | None:
    """The job row, locked until commit (a chunk checks its lease and cursor under it)."""
    query = select(Job).where(Job.id == job_id)
    if _postgres(session):
        query = query.with_for_update()
    return session.scalars(query.execution_options(populate_existing=True)).first()


def recent(session: Session, limit: int) -> list[Job]:
    return list(session.scalars(select(Job).order_by(Job.created_at.desc()).limit(limit)))


def open_jobs(session: Session, kind: str) -> list[Job]:
    return list(
        session.scalars(
            select(Job).where(Job.kind == kind, Job.status.in_(JOB_OPEN)).order_by(Job.created_at)
        )
    )


def claimable(session: Session, now: datetime, job_id: str | None = None) -> Job | None:
    """The oldest open job whose lease is free or expired, locked (skipping locked ones on PG)."""
    query = select(Job).where(
        Job.status.in_(JOB_OPEN), or_(Job.lease_until.is_(None), Job.lease_until < now)
    )
    if job_id is not None:
        query = select(Job).where(Job.id == job_id, Job.status.in_(JOB_OPEN))
    query = query.order_by(Job.created_at).limit(1)
    if _postgres(session):
        query = query.with_for_update(skip_locked=job_id is None)
    return session.scalars(query.execution_options(populate_existing=True)).first()


def cancel_open(session: Session, kind: str, reason: str, now: datetime) -> int:
    result = session.execute(
        update(Job)
        .where(Job.kind == kind, Job.status.in_(JOB_OPEN))
        .values(status=JOB_CANCELLED, error=reason, finished_at=now, updated_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def count_leads(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(LEADS_TABLE)) or 0)


def lead_ids_after(session: Session, cursor: str | None, limit: int) -> list[str]:
    """The next ``limit`` lead ids after ``cursor``, in id order (the order a re-score walks)."""
    query = select(LEADS_TABLE.c.id).order_by(LEADS_TABLE.c.id).limit(limit)
    if cursor is not None:
        query = query.where(LEADS_TABLE.c.id > cursor)
    return list(session.scalars(query))
