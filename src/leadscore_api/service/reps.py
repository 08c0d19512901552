"""The rep directory as a domain: who is in each sales team, and which rep gets a lead.

Routing happens in two steps. The ruleset's routing rules pick a **team** (the scoring core's
``result.owner``, e.g. ``north-team``). Then :func:`assign_owner` picks a **rep** of that team,
whose id is stored as the lead's ``owner``:

1. among the team's active reps, those whose regions, industries (empty = any) and size range
   fit the lead's ``region``, ``industry`` and ``employees`` (compared casefolded; an attribute
   the lead does not have excludes nobody), and who have capacity left (fewer open leads than
   ``capacity``);
2. preferring those whose expertise (``industries``) names the lead's industry over the others;
3. by the team's strategy: ``round_robin`` (the rep served longest ago, never-served first, ties
   by id) or ``least_open`` (fewest open leads, ties as round-robin).

A lead keeps its rep while the rep is active and in the lead's team. Deactivating a rep hands
its open leads (stages in :data:`OPEN_STAGES`) to the other reps of their team in the same
transaction; a lead no rep can take keeps its team and gets no owner, and is offered again at
its next scoring. See ``docs/routing.md``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.config import Settings
from leadscore_api.errors import Conflict, InvalidInput, NotFound
from leadscore_api.service.rep_file import (
    DirectoryFile,
    DirectoryFileError,
    RepEntry,
    directory_file_in,
    load_directory_file,
)
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.directory_models import (
    SOURCE_API,
    SOURCE_FILE,
    STRATEGIES,
    STRATEGY_LEAST_OPEN,
    STRATEGY_ROUND_ROBIN,
    Rep,
)
from leadscore_api.storage.ids import new_id
from leadscore_api.storage.repositories import reps as reps_repo
from leadscore_api.storage.repositories.reps import OPEN_STAGES
from leadscore_api.storage.unit_of_work import in_transaction, transactional

__all__ = [
    "OPEN_STAGES",
    "STRATEGIES",
    "Deactivation",
    "DirectoryFileError",
    "LeadProfile",
    "RepChanges",
    "RepExists",
    "RepFields",
    "RepHasOpenLeads",
    "RepView",
    "Reroute",
    "SyncReport",
    "activate_rep",
    "apply_directory",
    "assign_owner",
    "choose_rep",
    "covers",
    "create_rep",
    "deactivate_rep",
    "delete_rep",
    "directory_file_in",
    "get_rep",
    "list_reps",
    "reroute_open_leads",
    "sync_directory",
    "team_strategy",
    "update_rep",
]

log = logging.getLogger("leadscore.reps")

_NEVER = datetime.min.replace(tzinfo=UTC)
_TICK = timedelta(microseconds=1)


class RepExists(Conflict):
    problem_type = "rep-exists"
    title = "Rep already exists"


class RepHasOpenLeads(Conflict):
    problem_type = "rep-has-open-leads"
    title = "Rep still owns open leads"


def _not_found(rep_id: str) -> NotFound:
    return NotFound(f"no rep with id {rep_id!r}")


# -- the lead as routing sees it ---------------------------------------------------------------


def _fold(value: Any) -> str | None:
    if isinstance(value, str):
        folded = value.strip().casefold()
        return folded or None
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class LeadProfile:
    """The lead attributes that routing compares: casefolded region and industry, employees."""

    region: str | None = None
    industry: str | None = None
    employees: float | None = None

    @classmethod
    def of(cls, attributes: Mapping[str, Any]) -> LeadProfile:
        return cls(
            region=_fold(attributes.get("region")),
            industry=_fold(attributes.get("industry")),
            employees=_number(attributes.get("employees")),
        )


def _folded(values: Iterable[str]) -> set[str]:
    return {value.strip().casefold() for value in values}


def covers(rep: Rep, lead: LeadProfile) -> bool:
    """Whether the rep takes leads like this one (an attribute the lead lacks excludes nobody)."""
    if rep.regions and lead.region is not None and lead.region not in _folded(rep.regions):
        return False
    if (
        rep.industries
        and lead.industry is not None
        and lead.industry not in _folded(rep.industries)
    ):
        return False
    if lead.employees is not None:
        if lead.employees < rep.min_employees:
            return False
        if rep.max_employees is not None and lead.employees > rep.max_employees:
            return False
    return True


def _expert(rep: Rep, lead: LeadProfile) -> bool:
    return lead.industry is not None and lead.industry in _folded(rep.industries or ())


def _rotation_key(rep: Rep) -> tuple[bool, datetime, str]:
    """Round-robin order: never served first, then served longest ago, then by id."""
    served = rep.last_assigned_at
    return (served is not None, served or _NEVER, rep.id)


# -- choosing a rep ----------------------------------------------------------------------------


def team_strategy(session: Session, team: str) -> str:
    """The team's strategy, else the directory-wide one, else round-robin."""
    stored = reps_repo.strategy_of(session, team)
    return stored if stored in STRATEGIES else STRATEGY_ROUND_ROBIN


def choose_rep(
    session: Session,
    team: str,
    attributes: Mapping[str, Any],
    strategy: str | None = None,
    *,
    exclude: Collection[str] = (),
) -> Rep | None:
    """The rep of ``team`` who gets a lead with these attributes, or None when nobody can.

    ``strategy`` is ``round_robin`` or ``least_open``; None uses the team's stored strategy.
    The chosen rep's ``last_assigned_at`` moves to now (after every other rep of the team, so
    the rotation holds even when clocks of several replicas differ). The team's active reps are
    locked until the transaction ends, so concurrent choices in one team take turns.
    """
    if strategy is not None and strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    team_reps = reps_repo.active_in_team(session, team, lock=True)
    lead = LeadProfile.of(attributes)
    candidates = [rep for rep in team_reps if rep.id not in exclude and covers(rep, lead)]
    if not candidates:
        return None
    strategy = strategy or team_strategy(session, team)
    counts: dict[str, int] = {}
    if strategy == STRATEGY_LEAST_OPEN or any(rep.capacity is not None for rep in candidates):
        counts = reps_repo.open_lead_counts(session, [rep.id for rep in candidates])
    candidates = [
        rep for rep in candidates if rep.capacity is None or counts.get(rep.id, 0) < rep.capacity
    ]
    if not candidates:
        return None
    experts = [rep for rep in candidates if _expert(rep, lead)]
    pool = experts or candidates
    if strategy == STRATEGY_LEAST_OPEN:
        chosen = min(pool, key=lambda rep: (counts.get(rep.id, 0), *_rotation_key(rep)))
    else:
        chosen = min(pool, key=_rotation_key)
    latest = max((rep.last_assigned_at for rep in team_reps if rep.last_assigned_at), default=None)
    now = utcnow()
    chosen.last_assigned_at = now if latest is None or now > latest else latest + _TICK
    session.flush()
    return chosen


#: How long a team found with no rep for a kind of lead is not asked again for such a lead.
NOBODY_RETRY_SECONDS = 5.0


class _NobodyMemo:
    """Teams recently found with no rep able to take a kind of lead, in this process.

    Why: a team at capacity (or with no rep covering a region) answers "nobody" to every lead
    routed to it, and asking cost four queries and the team's rep locks on every event of
    every such lead: ingestion slowed by an order of magnitude exactly when sales was busiest.
    The answer is kept a few seconds, and forgotten at once when this process changes the
    directory; another replica's change is seen when the memo expires.
    """

    def __init__(self) -> None:
        self._until: dict[tuple[str, LeadProfile], float] = {}
        self._lock = threading.Lock()

    def recently(self, key: tuple[str, LeadProfile]) -> bool:
        until = self._until.get(key)
        return until is not None and until > time.monotonic()

    def remember(self, key: tuple[str, LeadProfile]) -> None:
        with self._lock:
            if len(self._until) > 10_000:
                self._until.clear()
            self._until[key] = time.monotonic() + NOBODY_RETRY_SECONDS

    def forget(self) -> None:
        with self._lock:
            self._until.clear()


_nobody = _NobodyMemo()


def forget_unassignable() -> None:
    """Ask the directory again for every lead: a rep was added, changed or freed."""
    _nobody.forget()


def assign_owner(
    session: Session,
    lead_id: str,
    team: str | None,
    attributes: Mapping[str, Any],
    current_owner: str | None,
) -> str | None:
    """The rep id to store as the lead's ``owner``, for the scoring path.

    ``team`` is the team the routing rules chose (``result.owner``); None (no rule matched and
    no ``default_owner``) gives None. The current owner stays while it is an active rep of
    ``team``; otherwise a rep is chosen (:func:`choose_rep`). None means no rep of the team can
    take the lead now: store the team in ``leads.team`` and no owner, and the lead is offered
    again at its next scoring. Call it inside the transaction that holds the lead's lock.
    """
    if not team:
        return None
    if current_owner and current_owner != team:
        current = reps_repo.get(session, current_owner)
        if current is not None and current.active and current.team == team:
            return current.id
    key = (team, LeadProfile.of(attributes))
    if _nobody.recently(key):
        return None
    chosen = choose_rep(session, team, attributes)
    if chosen is None:
        log.info("lead %s: no rep of team %r can take it", lead_id, team)
        _nobody.remember(key)
        return None
    return chosen.id


@dataclass
class Reroute:
    """What re-routing a rep's open leads did: lead id → its new owner (None: nobody)."""

    owners: dict[str, str | None] = field(default_factory=dict)

    @property
    def moved(self) -> int:
        return sum(1 for owner in self.owners.values() if owner is not None)

    @property
    def unassigned(self) -> int:
        return sum(1 for owner in self.owners.values() if owner is None)


def reroute_open_leads(
    session: Session, rep_id: str, *, default_team: str | None = None
) -> Reroute:
    """Give each open lead of ``rep_id`` another rep of the lead's team (never ``rep_id``).

    A lead's team is its ``team`` column, else ``default_team``, else the rep's current team.
    A lead no rep can take keeps its team and gets no owner. The leads are locked in id order
    and written with their version bumped (and ``updated_at``, so CRMs syncing by
    ``updated_since`` see the new owner). Runs in the caller's transaction.
    """
    rep = reps_repo.get(session, rep_id)
    fallback = default_team or (rep.team if rep is not None else None)
    result = Reroute()
    for lead in reps_repo.open_leads(session, rep_id):
        team = lead.team or fallback
        chosen = choose_rep(session, team, lead.attributes, exclude={rep_id}) if team else None
        owner = chosen.id if chosen is not None else None
        reps_repo.set_lead_owner(session, lead, owner, team, utcnow())
        result.owners[lead.id] = owner
    return result


# -- the directory: reading --------------------------------------------------------------------


@dataclass(frozen=True)
class RepView:
    """A rep with the number of open leads it owns."""

    rep: Rep
    open_leads: int


def _views(session: Session, reps: Sequence[Rep]) -> list[RepView]:
    counts = reps_repo.open_lead_counts(session, [rep.id for rep in reps])
    return [RepView(rep, counts.get(rep.id, 0)) for rep in reps]


def _view(session: Session, rep: Rep) -> RepView:
    return RepView(rep, reps_repo.open_lead_count(session, rep.id))


def _get(session: Session, rep_id: str, *, lock: bool = False) -> Rep:
    rep = reps_repo.get(session, rep_id, lock=lock)
    if rep is None:
        raise _not_found(rep_id)
    return rep


def get_rep(session: Session, rep_id: str) -> RepView:
    return _view(session, _get(session, rep_id))


def list_reps(
    session: Session, team: str | None = None, active: bool | None = None
) -> list[RepView]:
    return _views(session, reps_repo.list_reps(session, team, active))


# -- the directory: changing -------------------------------------------------------------------


@dataclass(frozen=True)
class RepFields:
    """Everything about a rep but its id."""

    name: str
    team: str
    email: str | None = None
    industries: Sequence[str] = ()
    regions: Sequence[str] = ()
    min_employees: int = 0
    max_employees: int | None = None
    capacity: int | None = None
    active: bool = True


#: The fields a :class:`RepChanges` may name (``active`` changes through activate/deactivate).
CHANGEABLE = (
    "name",
    "team",
    "email",
    "industries",
    "regions",
    "min_employees",
    "max_employees",
    "capacity",
)


@dataclass(frozen=True)
class RepChanges:
    """A partial update: only the fields named in ``given`` change, so ``None`` can clear
    ``email``, ``max_employees`` or ``capacity``."""

    given: frozenset[str]
    name: str | None = None
    team: str | None = None
    email: str | None = None
    industries: Sequence[str] | None = None
    regions: Sequence[str] | None = None
    min_employees: int | None = None
    max_employees: int | None = None
    capacity: int | None = None


def _tags(values: Iterable[str]) -> list[str]:
    """Trimmed, without blanks, each once whatever its case (the first spelling is kept)."""
    out: list[str] = []
    seen: set[str] = set()
    for value in values:
        text = value.strip()
        if text and text.casefold() not in seen:
            seen.add(text.casefold())
            out.append(text)
    return out


def _check(rep: Rep) -> None:
    if rep.max_employees is not None and rep.max_employees < rep.min_employees:
        raise InvalidInput.field(
            "max_employees",
            f"is below min_employees ({rep.max_employees} < {rep.min_employees})",
        )


def _fill(rep: Rep, fields: RepFields) -> bool:
    """Set the rep's fields (not ``active``); whether anything changed."""
    values: dict[str, Any] = {
        "name": fields.name.strip(),
        "team": fields.team.strip(),
        "email": fields.email.strip() if fields.email else None,
        "industries": _tags(fields.industries),
        "regions": _tags(fields.regions),
        "min_employees": fields.min_employees,
        "max_employees": fields.max_employees,
        "capacity": fields.capacity,
    }
    changed = False
    for name, value in values.items():
        if getattr(rep, name) != value:
            setattr(rep, name, value)
            changed = True
    return changed


@transactional
def create_rep(session: Session, fields: RepFields, rep_id: str | None = None) -> RepView:
    """A new rep (source ``api``); :class:`RepExists` when the id is taken."""
    forget_unassignable()
    if rep_id is not None and reps_repo.get(session, rep_id) is not None:
        raise RepExists(f"a rep with id {rep_id!r} already exists")
    now = utcnow()
    rep = Rep(
        id=rep_id or new_id("rep"),
        active=fields.active,
        source=SOURCE_API,
        created_at=now,
        updated_at=now,
    )
    _fill(rep, fields)
    _check(rep)
    reps_repo.add(session, rep)
    return RepView(rep, 0)


def _change(session: Session, rep: Rep, changes: RepChanges) -> Reroute | None:
    """Apply a partial update; a rep that changes team hands its open leads over to its old team."""
    old_team = rep.team
    unknown = changes.given - set(CHANGEABLE)
    if unknown:
        raise ValueError(f"not changeable: {', '.join(sorted(unknown))}")
    fields = RepFields(
        name=changes.name if "name" in changes.given and changes.name else rep.name,
        team=changes.team if "team" in changes.given and changes.team else rep.team,
        email=changes.email if "email" in changes.given else rep.email,
        industries=(
            changes.industries
            if "industries" in changes.given and changes.industries is not None
            else rep.industries
        ),
        regions=(
            changes.regions
            if "regions" in changes.given and changes.regions is not None
            else rep.regions
        ),
        min_employees=(
            changes.min_employees
            if "min_employees" in changes.given and changes.min_employees is not None
            else rep.min_employees
        ),
        max_employees=(
            changes.max_employees if "max_employees" in changes.given else rep.max_employees
        ),
        capacity=changes.capacity if "capacity" in changes.given else rep.capacity,
    )
    if _fill(rep, fields):
        _check(rep)
        rep.updated_at = utcnow()
        session.flush()
    if rep.team != old_team:
        return reroute_open_leads(session, rep.id, default_team=old_team)
    return None


@transactional
def update_rep(session: Session, rep_id: str, changes: RepChanges) -> RepView:
    """Change some fields. A rep moved to another team hands its open leads to its old team."""
    forget_unassignable()
    rep = _get(session, rep_id, lock=True)
    _change(session, rep, changes)
    return _view(session, rep)


@dataclass(frozen=True)
class Deactivation:
    rep: RepView
    reroute: Reroute


def _deactivate(session: Session, rep: Rep, *, default_team: str | None = None) -> Reroute:
    if rep.active:
        rep.active = False
        rep.updated_at = utcnow()
        session.flush()
    return reroute_open_leads(session, rep.id, default_team=default_team)


@transactional
def deactivate_rep(session: Session, rep_id: str) -> Deactivation:
    """Take the rep out of routing and hand its open leads to the rest of their teams.

    Deactivating an inactive rep re-routes whatever open leads it still owns (none, unless a
    lead was given to it while it was being deactivated), so it is safe to repeat.
    """
    rep = _get(session, rep_id, lock=True)
    reroute = _deactivate(session, rep)
    return Deactivation(RepView(rep, reps_repo.open_lead_count(session, rep.id)), reroute)


@transactional
def activate_rep(session: Session, rep_id: str) -> RepView:
    """Put the rep back into routing (its former leads stay with their new owners)."""
    forget_unassignable()
    rep = _get(session, rep_id, lock=True)
    if not rep.active:
        rep.active = True
        rep.updated_at = utcnow()
        session.flush()
    return _view(session, rep)


@transactional
def delete_rep(session: Session, rep_id: str) -> None:
    """Delete a rep that owns no open lead (:class:`RepHasOpenLeads` otherwise).

    Closed leads keep the id as their owner, for the record.
    """
    rep = _get(session, rep_id, lock=True)
    count = reps_repo.open_lead_count(session, rep.id)
    if count:
        raise RepHasOpenLeads(
            f"rep {rep_id!r} still owns {count} open lead{'s' if count != 1 else ''};"
            " deactivate it first (POST /v1/reps/{id}/deactivate hands them over)"
        )
    reps_repo.delete_rep(session, rep)


# -- the directory file ------------------------------------------------------------------------


@dataclass
class SyncReport:
    """What a directory file sync changed."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deactivated: list[str] = field(default_factory=list)
    reactivated: list[str] = field(default_factory=list)
    moved: int = 0
    unassigned: int = 0

    def add(self, reroute: Reroute | None) -> None:
        if reroute is not None:
            self.moved += reroute.moved
            self.unassigned += reroute.unassigned

    def summary(self) -> str:
        return (
            f"{len(self.created)} created, {len(self.updated)} updated,"
            f" {len(self.unchanged)} unchanged, {len(self.deactivated)} deactivated,"
            f" {len(self.reactivated)} reactivated; {self.moved} open leads moved,"
            f" {self.unassigned} left without a rep"
        )


def _entry_fields(entry: RepEntry) -> RepFields:
    return RepFields(
        name=entry.name,
        team=entry.team,
        email=entry.email,
        industries=entry.industries,
        regions=entry.regions,
        min_employees=entry.min_employees,
        max_employees=entry.max_employees,
        capacity=entry.capacity,
        active=entry.active,
    )


def apply_directory(session: Session, directory: DirectoryFile) -> SyncReport:
    """Make the table agree with a directory file, in the caller's transaction.

    Reps of the file are created or updated (the file wins over API changes) and become
    ``file`` reps; reps the file created or adopted before and no longer lists, or lists with
    ``active: false``, are deactivated and their open leads re-routed; reps created through the
    API and not in the file are left alone. Team strategies become exactly the file's.
    """
    forget_unassignable()
    report = SyncReport()
    now = utcnow()
    # First, so that the leads of reps leaving the directory move by the file's strategies.
    reps_repo.replace_strategies(session, directory.strategies(), now)
    entries = sorted(directory.reps, key=lambda entry: entry.id)
    stored = reps_repo.by_ids(session, [entry.id for entry in entries])
    leaving: list[tuple[Rep, str | None]] = []
    for entry in entries:
        rep = stored.get(entry.id)
        if rep is None:
            rep = Rep(id=entry.id, active=entry.active, source=SOURCE_FILE, created_at=now)
            _fill(rep, _entry_fields(entry))
            rep.updated_at = now
            reps_repo.add(session, rep)
            report.created.append(rep.id)
            continue
        old_team = rep.team
        changed = _fill(rep, _entry_fields(entry))
        if rep.source != SOURCE_FILE:
            rep.source = SOURCE_FILE
            changed = True
        if entry.active and not rep.active:
            rep.active = True
            report.reactivated.append(rep.id)
            changed = True
        if changed:
            rep.updated_at = now
            report.updated.append(rep.id)
        else:
            report.unchanged.append(rep.id)
        session.flush()
        if not entry.active:
            leaving.append((rep, old_team))
        elif rep.team != old_team:
            report.add(reroute_open_leads(session, rep.id, default_team=old_team))
    listed = {entry.id for entry in entries}
    leaving.extend(
        (rep, None) for rep in reps_repo.from_file(session) if rep.id not in listed and rep.active
    )
    for gone, team_before in leaving:
        if gone.active:
            report.deactivated.append(gone.id)
        report.add(_deactivate(session, gone, default_team=team_before))
    return report


def sync_directory(session_factory: sessionmaker[Session], path: str | Path) -> SyncReport:
    """Load the directory file at ``path`` and apply it in one transaction.

    Raises :class:`DirectoryFileError` (every problem as ``FILE:LINE: message``) before
    touching the database when the file is not valid.
    """
    directory = load_directory_file(path)
    report = in_transaction(session_factory, lambda session: apply_directory(session, directory))
    log.info("rep directory %s synced: %s", path, report.summary())
    return report


def directory_file_for(settings: Settings) -> Path | None:
    """The rep directory the service syncs at start: ``directory/reps.yaml`` of the rules folder
    in force, like the rulesets (the bundled example included, so that leads reach a person on
    the default configuration; ``LEADSCORE_SYNC_REP_DIRECTORY=false`` leaves the table to the
    API)."""
    if not settings.sync_rep_directory:
        return None
    return directory_file_in(settings.resolved_rules_dir())
