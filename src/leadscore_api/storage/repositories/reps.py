"""SQL of the rep directory (``reps``, ``rep_teams``) and of the leads reps own.

A lead is **open** while its stage is one of :data:`OPEN_STAGES` (``lead``, ``mql``, ``sql``):
a rep still has to work it. From ``opportunity`` on (or any other stage a ruleset defines) the
lead has been converted or closed, and it no longer counts against a rep's capacity nor moves
when the rep leaves. A lead belongs to a rep when its ``owner`` is the rep's id.

Locks, on PostgreSQL (SQLite's write transaction already excludes every other writer): choosing
a rep locks the team's active reps (``FOR UPDATE``, id order), so that two transactions do not
both see the same free slot or the same next rep in the rotation; re-routing locks the rep's
open leads in id order, like ingestion does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, delete, func, select, update
from sqlalchemy.orm import Session

from leadscore_api.storage.base import Base
from leadscore_api.storage.directory_models import DIRECTORY_WIDE, SOURCE_FILE, Rep, RepTeam
from leadscore_api.storage.distribution import is_distributed
from leadscore_api.storage.models import Lead
from leadscore_api.storage.unit_of_work import RetryTransaction

#: The stages in which a lead still needs its rep.
OPEN_STAGES: tuple[str, ...] = ("lead", "mql", "sql")

LEADS_TABLE: Table = Base.metadata.tables["leads"]

_SET_OWNER = (
    update(LEADS_TABLE)
    .where(LEADS_TABLE.c.id == bindparam("b_id"), LEADS_TABLE.c.version == bindparam("b_version"))
    .values(
        owner=bindparam("owner"),
        team=bindparam("team"),
        updated_at=bindparam("updated_at"),
        version=bindparam("new_version"),
    )
)


@dataclass(frozen=True)
class OwnedLead:
    """An open lead of a rep, locked, with what re-routing needs to choose its next rep."""

    id: str
    version: int
    team: str | None
    attributes: dict[str, Any]


# -- reps --------------------------------------------------------------------------------------


def get(session: Session, rep_id: str, *, lock: bool = False) -> Rep | None:
    if lock:
        return session.scalars(select(Rep).where(Rep.id == rep_id).with_for_update()).first()
    return session.get(Rep, rep_id)


def by_ids(session: Session, rep_ids: Iterable[str]) -> dict[str, Rep]:
    ids = sorted(set(rep_ids))
    if not ids:
        return {}
    return {rep.id: rep for rep in session.scalars(select(Rep).where(Rep.id.in_(ids)))}


def list_reps(session: Session, team: str | None = None, active: bool | None = None) -> list[Rep]:
    """Reps by team, then id."""
    query = select(Rep).order_by(Rep.team, Rep.id)
    if team is not None:
        query = query.where(Rep.team == team)
    if active is not None:
        query = query.where(Rep.active.is_(active))
    return list(session.scalars(query))


def active_in_team(session: Session, team: str, *, lock: bool = False) -> list[Rep]:
    """The active reps of a team, in id order; ``lock`` takes their row locks in that order."""
    query = select(Rep).where(Rep.team == team, Rep.active.is_(True)).order_by(Rep.id)
    if lock:
        query = query.with_for_update()
    return list(session.scalars(query))


def from_file(session: Session) -> list[Rep]:
    """Reps the directory file created or adopted (the ones a sync may deactivate)."""
    return list(session.scalars(select(Rep).where(Rep.source == SOURCE_FILE).order_by(Rep.id)))


def add(session: Session, rep: Rep) -> None:
    session.add(rep)
    session.flush()


def delete_rep(session: Session, rep: Rep) -> None:
    session.delete(rep)
    session.flush()


# -- strategies --------------------------------------------------------------------------------


def strategy_of(session: Session, team: str) -> str | None:
    """The team's own strategy, else the directory-wide one, else None."""
    query = select(RepTeam.team, RepTeam.strategy).where(RepTeam.team.in_((team, DIRECTORY_WIDE)))
    rows = {name: strategy for name, strategy in session.execute(query)}
    return rows.get(team) or rows.get(DIRECTORY_WIDE)


def strategies(session: Session) -> dict[str, str]:
    """Every stored strategy by team (``*`` is the directory-wide one)."""
    query = select(RepTeam.team, RepTeam.strategy)
    return {team: strategy for team, strategy in session.execute(query)}


def replace_strategies(session: Session, wanted: dict[str, str], now: datetime) -> None:
    """Make ``rep_teams`` hold exactly ``wanted`` (team → strategy)."""
    stored = {row.team: row for row in session.scalars(select(RepTeam))}
    gone = sorted(set(stored) - set(wanted))
    if gone:
        session.execute(delete(RepTeam).where(RepTeam.team.in_(gone)))
    for team, strategy in sorted(wanted.items()):
        row = stored.get(team)
        if row is None:
            session.add(RepTeam(team=team, strategy=strategy, updated_at=now))
        elif row.strategy != strategy:
            row.strategy = strategy
            row.updated_at = now
    session.flush()


# -- the leads reps own ------------------------------------------------------------------------


def open_lead_counts(
    session: Session, rep_ids: Iterable[str], open_stages: Sequence[str] = OPEN_STAGES
) -> dict[str, int]:
    """Open leads per rep (reps without any are left out)."""
    ids = sorted(set(rep_ids))
    if not ids:
        return {}
    rows = session.execute(
        select(Lead.owner, func.count())
        .where(Lead.owner.in_(ids), Lead.stage.in_(list(open_stages)))
        .group_by(Lead.owner)
    )
    return {owner: count for owner, count in rows if owner is not None}


def open_lead_count(session: Session, rep_id: str, open_stages: Sequence[str] = OPEN_STAGES) -> int:
    return open_lead_counts(session, [rep_id], open_stages).get(rep_id, 0)


def open_leads(
    session: Session, rep_id: str, open_stages: Sequence[str] = OPEN_STAGES
) -> list[OwnedLead]:
    """The rep's open leads, locked in id order (the order ingestion locks leads in).

    A distributed database locks one lead per statement: the leads are read, then each is
    locked by its id if it is still the rep's and open.
    """
    columns = (
        LEADS_TABLE.c.id,
        LEADS_TABLE.c.version,
        LEADS_TABLE.c.team,
        LEADS_TABLE.c.attributes,
    )
    owned = (LEADS_TABLE.c.owner == rep_id, LEADS_TABLE.c.stage.in_(list(open_stages)))
    query = select(*columns).where(*owned).order_by(LEADS_TABLE.c.id)
    if not is_distributed(session):
        rows = list(session.execute(query.with_for_update()))
    else:
        rows = []
        for lead_id in session.scalars(
            select(LEADS_TABLE.c.id).where(*owned).order_by(LEADS_TABLE.c.id)
        ).all():
            lock = select(*columns).where(LEADS_TABLE.c.id == lead_id, *owned).with_for_update()
            rows.extend(session.execute(lock))
    return [
        OwnedLead(id=row.id, version=row.version, team=row.team, attributes=row.attributes or {})
        for row in rows
    ]


def set_lead_owner(
    session: Session, lead: OwnedLead, owner: str | None, team: str | None, now: datetime
) -> None:
    """Give a locked lead a new owner (and team), guarded by its version like every lead write."""
    result = session.connection().execute(
        _SET_OWNER,
        {
            "b_id": lead.id,
            "b_version": lead.version,
            "new_version": lead.version + 1,
            "owner": owner,
            "team": team,
            "updated_at": now,
        },
    )
    if result.rowcount != 1:
        raise RetryTransaction(f"lead {lead.id} changed under this transaction")
