"""Tables of the ruleset lifecycle: which version of each ruleset is active, and background jobs.

The database, not the process, says which ruleset versions are active, so that every replica
serves the same ones: ``ruleset_activations`` is the log of every switch (the last row per name
is the active version, and its ``previous_id`` is what a rollback returns to), and the single
row of ``ruleset_generation`` is bumped by every switch. Replicas poll that one integer and
reload only when it moved; writers update it first, so it is also the lock that serialises
activations.

``jobs`` holds long work that must survive a crash (re-scoring every lead after an activation):
a worker leases a row, works in chunks, and each chunk's transaction also advances the job's
``cursor``, so a killed worker's job resumes where its last committed chunk ended.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from leadscore_api.storage.base import Base, JSONType, utcnow
from leadscore_api.storage.models import BigIntKey

#: Job states: waiting for a worker, leased by one, finished, given up with an error, replaced.
JOB_QUEUED = "queued"
JOB_RUNNING = "running"
JOB_DONE = "done"
JOB_FAILED = "failed"
#: Replaced by a newer job of the same kind before it finished (e.g. another activation).
JOB_CANCELLED = "cancelled"
JOB_OPEN = (JOB_QUEUED, JOB_RUNNING)


class RulesetActivation(Base):
    """One switch of a ruleset name to a stored version (load, activate, rollback)."""

    __tablename__ = "ruleset_activations"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    ruleset_id: Mapped[int] = mapped_column(ForeignKey("rulesets.id"))
    #: The version active before this switch (None for the first): where a rollback goes.
    previous_id: Mapped[int | None] = mapped_column(ForeignKey("rulesets.id"), default=None)
    #: ``load`` (a new version found in the rules folder), ``activate`` or ``rollback``.
    action: Mapped[str] = mapped_column(String(20))
    activated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_ruleset_activations_name_id", "name", "id"),)


class RulesetGeneration(Base):
    """One row (id 1): a counter bumped by every activation, cheap for replicas to poll."""

    __tablename__ = "ruleset_generation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """Background work with progress, resumable from ``cursor`` after a crash."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), default=JOB_QUEUED)
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int | None] = mapped_column(Integer, default=None)
    #: The last item finished (for a re-score, the last lead id, leads going in id order).
    cursor: Mapped[str | None] = mapped_column(String(100), default=None)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    lease_owner: Mapped[str | None] = mapped_column(String(100), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (Index("ix_jobs_status_created_at", "status", "created_at"),)


class RulesetChallenger(Base):
    """A stored version scoring every event beside the active version of ``name``, unheeded.

    One row per ruleset name while its A/B test runs; stopping or promoting deletes it. A row,
    not a process setting, so that every replica scores the challenger (the generation is
    bumped with each change, and replicas reload the set when it moves).
    """

    __tablename__ = "ruleset_challengers"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    ruleset_id: Mapped[int] = mapped_column(ForeignKey("rulesets.id"))
    #: When the test began: the report compares the leads scored by both since then.
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
