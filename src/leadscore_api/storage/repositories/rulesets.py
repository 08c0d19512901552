"""SQL of ``rulesets`` (every ruleset text stored, by name and sha256), their activations and the
generation counter replicas poll."""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from leadscore_api.storage.base import utcnow
from leadscore_api.storage.lifecycle_models import RulesetActivation, RulesetGeneration
from leadscore_api.storage.models import RulesetRecord

#: The one row of ``ruleset_generation``.
GENERATION_ROW = 1


def find(session: Session, name: str, sha256: str) -> RulesetRecord | None:
    return session.scalar(
        select(RulesetRecord).where(RulesetRecord.name == name, RulesetRecord.sha256 == sha256)
    )


def add_once(session: Session, record: RulesetRecord) -> RulesetRecord:
    """Insert ``record`` unless the same (name, sha256) is stored; return the stored row.

    Replicas starting together may race to insert the same text; the loser's unique-key error
    is absorbed in a savepoint because the row it wanted exists.
    """
    existing = find(session, record.name, record.sha256)
    if existing is not None:
        return existing
    try:
        with session.begin_nested():
            session.add(record)
    except IntegrityError:
        existing = find(session, record.name, record.sha256)
        if existing is None:
            raise
        return existing
    return record


def get(session: Session, record_id: int) -> RulesetRecord | None:
    return session.get(RulesetRecord, record_id)


def by_version(session: Session, name: str, version: int) -> RulesetRecord | None:
    """The stored text of ``name`` at ``version`` (the latest stored, should there be several)."""
    return session.scalar(
        select(RulesetRecord)
        .where(RulesetRecord.name == name, RulesetRecord.version == version)
        .order_by(RulesetRecord.id.desc())
        .limit(1)
    )


def versions(session: Session, name: str) -> list[RulesetRecord]:
    return list(
        session.scalars(
            select(RulesetRecord)
            .where(RulesetRecord.name == name)
            .order_by(RulesetRecord.version, RulesetRecord.id)
        )
    )


def current_activations(session: Session) -> dict[str, RulesetActivation]:
    """The last activation of each ruleset name: which version each name serves now."""
    latest = select(func.max(RulesetActivation.id)).group_by(RulesetActivation.name)
    rows = session.scalars(select(RulesetActivation).where(RulesetActivation.id.in_(latest)))
    return {row.name: row for row in rows}


def active_records(session: Session) -> list[tuple[RulesetActivation, RulesetRecord]]:
    """Each name's active version with its text, by name."""
    activations = current_activations(session)
    if not activations:
        return []
    ids = {a.ruleset_id for a in activations.values()}
    records = {
        r.id: r for r in session.scalars(select(RulesetRecord).where(RulesetRecord.id.in_(ids)))
    }
    return [(a, records[a.ruleset_id]) for _, a in sorted(activations.items())]


def last_activation_of(
    session: Session, name: str, ruleset_id: int, before_id: int
) -> RulesetActivation | None:
    """The latest switch of ``name`` to ``ruleset_id`` before activation ``before_id``."""
    return session.scalar(
        select(RulesetActivation)
        .where(
            RulesetActivation.name == name,
            RulesetActivation.ruleset_id == ruleset_id,
            RulesetActivation.id < before_id,
        )
        .order_by(RulesetActivation.id.desc())
        .limit(1)
    )


def activations(session: Session, name: str) -> list[RulesetActivation]:
    return list(
        session.scalars(
            select(RulesetActivation)
            .where(RulesetActivation.name == name)
            .order_by(RulesetActivation.id)
        )
    )


def add_activation(session: Session, activation: RulesetActivation) -> RulesetActivation:
    session.add(activation)
    session.flush()
    return activation


def generation(session: Session) -> int:
    """The activation counter replicas poll (0 before the first activation)."""
    value = session.scalar(
        select(RulesetGeneration.generation).where(RulesetGeneration.id == GENERATION_ROW)
    )
    return int(value or 0)


def bump_generation(session: Session) -> int:
    """Increment the counter; the row stays locked until commit, serialising activations.

    The first bump inserts the row; two first bumps racing make one fail on the primary key,
    and the unit of work runs it again, finding the row.
    """
    now = utcnow()
    result = session.execute(
        update(RulesetGeneration)
        .where(RulesetGeneration.id == GENERATION_ROW)
        .values(generation=RulesetGeneration.generation + 1, updated_at=now)
    )
    if getattr(result, "rowcount", 0) == 0:
        session.add(RulesetGeneration(id=GENERATION_ROW, generation=1, updated_at=now))
        session.flush()
    return generation(session)


def lock_generation(session: Session) -> None:
    """Take the activation lock: the generation row, locked until commit (created if missing).

    On SQLite the first write of the transaction takes the database's write lock instead; the
    no-op update below makes that happen here, before the activation state is read.
    """
    result = session.execute(
        update(RulesetGeneration)
        .where(RulesetGeneration.id == GENERATION_ROW)
        .values(generation=RulesetGeneration.generation)
    )
    if getattr(result, "rowcount", 0) == 0:
        session.add(RulesetGeneration(id=GENERATION_ROW, generation=0, updated_at=utcnow()))
        session.flush()
