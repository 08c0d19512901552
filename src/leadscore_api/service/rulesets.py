"""The rulesets a service process scores with: the versions the database says are active.

Every active ruleset scores every lead; the primary one (``settings.primary_ruleset``) drives
the lead's letter, score, tier, stage and the published transitions, the others are shown
under ``models``. Each version is stored in the ``rulesets`` table (name, version, sha256,
text), so that history rows, which name a ruleset version, can always be traced back to the
exact text that produced them, and so that any replica can serve any stored version.

Which version of each name is active is data too (``ruleset_activations``), not a property of
a process: activating, rolling back or reloading on one replica changes what all of them
serve. A :class:`RulesetRegistry` bound to the database polls one integer (the activation
generation) at most every ``LEADSCORE_RULESET_REFRESH_SECONDS`` and swaps in the new set when it
moved, compiling each text once (kept by sha256). Requests take a :meth:`snapshot`, so one
request scores with one set from start to end even if a swap happens meanwhile.

The set also holds the running challengers (A/B tests, ``ruleset_challengers``): a stored
version scored beside the active one of its name, under the name ``<name>@challenger``, and
never acted on. Declaring or stopping one bumps the same generation, so replicas follow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.config import Settings
from leadscore_api.errors import Conflict, FieldProblem, InvalidInput, NotFound
from leadscore_api.scoring import LoadedRuleset, RuleFileError, load_rules_dir
from leadscore_api.scoring.loader import load_ruleset_text
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.lifecycle_models import RulesetActivation
from leadscore_api.storage.models import RulesetRecord
from leadscore_api.storage.repositories import challenger as challenger_repo
from leadscore_api.storage.repositories import rulesets as rulesets_repo
from leadscore_api.storage.unit_of_work import in_transaction

log = logging.getLogger("leadscore.rulesets")


class RegistryError(Exception):
    """The configured rules cannot be served (e.g. the primary ruleset is missing)."""


@dataclass(frozen=True)
class _ActiveSet:
    """One consistent set of active rulesets, swapped as a whole."""

    rulesets: dict[str, LoadedRuleset]
    primary_name: str
    activated_at: dict[str, datetime]
    #: The database generation this set was read at (-1: not read from a database).
    generation: int = -1
    #: Running challengers by the active name they challenge; each is named ``<name>@challenger``.
    challengers: dict[str, LoadedRuleset] = field(default_factory=dict)
    #: When each challenge began, by the active name.
    challenger_started_at: dict[str, datetime] = field(default_factory=dict)


class RulesetRegistry:
    """The active rulesets; bound to a database, it follows the activations stored there."""

    def __init__(
        self,
        rulesets: dict[str, LoadedRuleset],
        primary_name: str,
        activated_at: dict[str, datetime] | None = None,
        *,
        generation: int = -1,
    ) -> None:
        self._active = _ActiveSet(
            dict(rulesets), primary_name, dict(activated_at or {}), generation
        )
        #: What the rules folder held when the process started (stored at start-up).
        self.folder: dict[str, LoadedRuleset] = dict(rulesets)
        self._snapshot: RulesetRegistry | None = None
        #: Compiled rulesets by sha256: a text is parsed once per process, whatever switches.
        self._compiled: dict[str, LoadedRuleset] = {r.sha256: r for r in rulesets.values()}
        self._source: sessionmaker[Session] | None = None
        self._refresh_seconds = 2.0
        self._checked_at = float("-inf")
        self._refresh_lock = threading.Lock()
        self._ticket_lock = threading.Lock()
        self._tickets = itertools.count(1)
        self._applied_ticket = 0

    @classmethod
    def load(cls, settings: Settings) -> RulesetRegistry:
        """Load the rules folder; raises ``RuleFileError`` or ``RegistryError``."""
        directory = settings.resolved_rules_dir()
        rulesets = load_rules_dir(directory)
        return cls.from_rulesets(rulesets, settings.primary_ruleset, source=str(directory))

    @classmethod
    def from_rulesets(
        cls, rulesets: dict[str, LoadedRuleset], primary: str, *, source: str = "the rules"
    ) -> RulesetRegistry:
        if primary not in rulesets:
            names = ", ".join(sorted(rulesets)) or "none"
            raise RegistryError(
                f"the primary ruleset {primary!r} (LEADSCORE_PRIMARY_RULESET) is not in {source};"
                f" loaded: {names}"
            )
        return cls(rulesets=dict(rulesets), primary_name=primary)

    # -- what scoring reads ------------------------------------------------------------------

    @property
    def rulesets(self) -> dict[str, LoadedRuleset]:
        return self._active.rulesets

    @property
    def primary_name(self) -> str:
        return self._active.primary_name

    @property
    def activated_at(self) -> dict[str, datetime]:
        """When each active version was switched on (filled from the database)."""
        return self._active.activated_at

    @property
    def generation(self) -> int:
        return self._active.generation

    @property
    def refresh_seconds(self) -> float:
        return self._refresh_seconds

    @property
    def primary(self) -> LoadedRuleset:
        return self.rulesets[self.primary_name]

    @property
    def challengers(self) -> dict[str, LoadedRuleset]:
        """Running challengers by the active name they challenge (scored, never acted on)."""
        return self._active.challengers

    @property
    def challenger_started_at(self) -> dict[str, datetime]:
        return self._active.challenger_started_at

    def is_challenger(self, loaded: LoadedRuleset) -> bool:
        challenger = self._active.challengers.get(loaded.name.removesuffix(CHALLENGER_SUFFIX))
        return challenger is loaded

    def ordered(self) -> list[LoadedRuleset]:
        """The primary first, then the others by name (a stable order for locks and output)."""
        active = self._active
        others = sorted(name for name in active.rulesets if name != active.primary_name)
        return [active.rulesets[active.primary_name], *(active.rulesets[n] for n in others)]

    # -- following the database --------------------------------------------------------------

    def bind(self, session_factory: sessionmaker[Session], refresh_seconds: float) -> None:
        """Follow the activations stored in this database from now on."""
        self._source = session_factory
        self._refresh_seconds = refresh_seconds

    def snapshot(self) -> RulesetRegistry:
        """The current set, frozen: what one request or one batch scores with. No I/O."""
        active = self._active
        frozen = self._snapshot
        if frozen is None or frozen._active is not active:
            frozen = RulesetRegistry.__new__(RulesetRegistry)
            frozen._active = active
            frozen._snapshot = frozen
            frozen._compiled = self._compiled
            frozen._source = None
            frozen._refresh_seconds = self._refresh_seconds
            frozen._checked_at = float("-inf")
            frozen._refresh_lock = self._refresh_lock
            frozen._ticket_lock = self._ticket_lock
            frozen._tickets = self._tickets
            frozen._applied_ticket = 0
            frozen.folder = self.folder
            self._snapshot = frozen
        return frozen

    def current(self) -> RulesetRegistry:
        """Check the database when due (see :meth:`refresh_if_due`), then :meth:`snapshot`."""
        self.refresh_if_due()
        return self.snapshot()

    def current_in(self, session: Session) -> RulesetRegistry:
        """The set active as of ``session``'s transaction (one indexed read), frozen.

        For work that must not run a moment on a stale set, such as a re-score chunk queued
        by the very activation this process has not picked up yet.
        """
        if rulesets_repo.generation(session) != self.generation:
            self.refresh(session)
        return self.snapshot()

    def refresh_due(self) -> bool:
        """Whether the next :meth:`refresh_if_due` would ask the database (no I/O)."""
        return (
            self._source is not None
            and time.monotonic() - self._checked_at >= self._refresh_seconds
        )

    def refresh_if_due(self) -> None:
        """Read the generation when the interval has passed; reload the set when it moved.

        One thread asks at a time; the others keep serving the current set meanwhile. A failure
        (database away, a stored text that no longer compiles) is logged and the current set
        stays: a replica never stops scoring because of a refresh.
        """
        if not self.refresh_due() or not self._refresh_lock.acquire(blocking=False):
            return
        try:
            assert self._source is not None
            with self._source() as session:
                if rulesets_repo.generation(session) != self.generation:
                    self.refresh(session)
        except Exception:
            log.exception("could not refresh the active rulesets; serving the current ones")
        finally:
            self._checked_at = time.monotonic()
            self._refresh_lock.release()

    def refresh(self, session: Session) -> None:
        """Load the active versions stored in the database now (raises ``RegistryError``)."""
        with self._ticket_lock:
            ticket = next(self._tickets)
        generation = rulesets_repo.generation(session)
        rulesets: dict[str, LoadedRuleset] = {}
        activated_at: dict[str, datetime] = {}
        for activation, record in rulesets_repo.active_records(session):
            rulesets[record.name] = self._compile(record)
            activated_at[record.name] = activation.activated_at
        primary = self.primary_name
        if primary not in rulesets:
            raise RegistryError(f"no active version of the primary ruleset {primary!r} is stored")
        challengers: dict[str, LoadedRuleset] = {}
        started_at: dict[str, datetime] = {}
        for challenge, record in challenger_repo.current(session):
            if challenge.name in rulesets:
                # A copy under its own name: its rows, snapshots and output never mix with
                # the active version's, even when both are the same text.
                compiled = self._compile(record)
                compiled.scorer  # noqa: B018 - built once here, shared by the copy
                challengers[challenge.name] = replace(
                    compiled, name=challenger_repo.score_key(challenge.name)
                )
                started_at[challenge.name] = challenge.started_at
        with self._ticket_lock:
            # Two threads refreshing at once: the one that started reading first (and so may
            # have read the older state) must not overwrite the other's set.
            if ticket > self._applied_ticket:
                self._applied_ticket = ticket
                self._active = _ActiveSet(
                    rulesets, primary, activated_at, generation, challengers, started_at
                )
        self._checked_at = time.monotonic()

    def stored(self, session: Session, name: str, sha256: str) -> LoadedRuleset | None:
        """Any stored version of ``name`` by its text's sha256, compiled once per process
        (history rows name the version that wrote them, active or not); None if not stored."""
        loaded = self._compiled.get(sha256)
        if loaded is None:
            record = rulesets_repo.find(session, name, sha256)
            if record is None:
                return None
            loaded = self._compile(record)
        return loaded

    def _compile(self, record: RulesetRecord) -> LoadedRuleset:
        loaded = self._compiled.get(record.sha256)
        if loaded is None:
            loaded = load_ruleset_text(record.content, stored_name(record))
            self._compiled[record.sha256] = loaded
        return loaded


#: What a challenger's name ends with, in its score rows and in the set (``<name>@challenger``).
CHALLENGER_SUFFIX = challenger_repo.SUFFIX


def stored_name(record: RulesetRecord) -> str:
    """How problems in a stored text name it (it has no file of its own)."""
    return f"{record.name} v{record.version} (stored)"


# -- the lifecycle: reload, activate, roll back ------------------------------------------------

FileStatus = Literal["activated", "stored", "unchanged"]


@dataclass
class ReloadedFile:
    name: str
    version: int
    sha256: str
    path: str
    #: ``activated``: a version seen for the first time, now active; ``unchanged``: stored
    #: already (active or not: a rollback is not undone by a reload).
    status: FileStatus


@dataclass
class ReloadReport:
    files: list[ReloadedFile] = field(default_factory=list)
    generation: int = 0

    @property
    def changed(self) -> bool:
        return any(f.status == "activated" for f in self.files)


def rule_file_problems(exc: RuleFileError) -> InvalidInput:
    """A rules folder that does not validate, as a 422 naming each ``FILE:LINE``."""
    errors: list[FieldProblem] = [
        {"field": f"{p.file}:{p.line}", "message": p.message} for p in exc.problems
    ]
    detail = "the rules do not validate; the active versions stay:\n" + str(exc)
    return InvalidInput(detail, errors=errors)


def load_folder(settings: Settings) -> dict[str, LoadedRuleset]:
    """The rules folder, validated (raises ``InvalidInput`` with ``FILE:LINE`` errors)."""
    try:
        loaded = load_rules_dir(settings.resolved_rules_dir())
    except RuleFileError as exc:
        raise rule_file_problems(exc) from None
    return loaded


def store_folder(
    session: Session, loaded: dict[str, LoadedRuleset], *, activate: bool = True
) -> ReloadReport:
    """Store the folder's rulesets and activate the versions seen for the first time.

    With ``activate=False`` new versions are only stored (status ``stored``), to be backtested
    or run as a challenger before anyone is scored with them; a name with no active version
    yet is still activated, or the service would have nothing to score with.

    All or nothing: a file whose version is stored with other content is refused (409 naming
    the file) and nothing is written. A stored version is not activated again, so a rollback
    survives restarts and reloads of a folder that still holds the newer file; a name with no
    active version yet (a first start) gets the folder's.
    """
    rulesets_repo.lock_generation(session)
    conflicts: list[FieldProblem] = []
    plan: list[tuple[LoadedRuleset, RulesetRecord | None]] = []
    for item in sorted(loaded.values(), key=lambda r: r.name):
        existing = rulesets_repo.by_version(session, item.name, item.version)
        if existing is not None and existing.sha256 != item.sha256:
            conflicts.append(
                {
                    "field": item.path,
                    "message": (
                        f"ruleset {item.name!r} version {item.version} is already stored with"
                        f" other content (sha256 {existing.sha256[:12]}, this file"
                        f" {item.sha256[:12]}); give the changed file a new version number"
                    ),
                }
            )
        plan.append((item, existing))
    if conflicts:
        detail = "; ".join(f"{c['field']}: {c['message']}" for c in conflicts)
        raise Conflict(f"changed rule files kept their version number: {detail}", errors=conflicts)
    active = rulesets_repo.current_activations(session)
    report = ReloadReport()
    changed = False
    for item, existing in plan:
        status: FileStatus = "unchanged"
        if existing is None or item.name not in active:
            record = existing or rulesets_repo.add_once(
                session,
                RulesetRecord(
                    name=item.name,
                    version=item.version,
                    sha256=item.sha256,
                    content=item.content,
                    activated_at=utcnow(),
                ),
            )
            current = active.get(item.name)
            if current is not None and not activate:
                status = "stored" if existing is None else "unchanged"
            elif current is None or current.ruleset_id != record.id:
                _switch(session, item.name, record.id, current, "load")
                status = "activated"
                changed = True
        report.files.append(ReloadedFile(item.name, item.version, item.sha256, item.path, status))
    report.generation = (
        rulesets_repo.bump_generation(session) if changed else rulesets_repo.generation(session)
    )
    return report


def _switch(
    session: Session,
    name: str,
    ruleset_id: int,
    current: RulesetActivation | None,
    action: str,
    previous_id: int | None = None,
) -> RulesetActivation:
    return rulesets_repo.add_activation(
        session,
        RulesetActivation(
            name=name,
            ruleset_id=ruleset_id,
            previous_id=previous_id if action == "rollback" else _id_of(current),
            action=action,
            activated_at=utcnow(),
        ),
    )


def _id_of(activation: RulesetActivation | None) -> int | None:
    return activation.ruleset_id if activation is not None else None


@dataclass
class Switch:
    """What an activation or rollback did."""

    name: str
    version: int
    sha256: str
    previous_version: int | None
    changed: bool
    generation: int


def activate(session: Session, name: str, version: int) -> Switch:
    """Make the stored ``version`` of ``name`` the active one (a no-op when it already is)."""
    rulesets_repo.lock_generation(session)
    record = rulesets_repo.by_version(session, name, version)
    if record is None:
        raise NotFound(f"no stored version {version} of ruleset {name!r}")
    _check_compiles(record)
    current = rulesets_repo.current_activations(session).get(name)
    previous = _version_of(session, _id_of(current))
    if current is not None and current.ruleset_id == record.id:
        return Switch(
            name, version, record.sha256, previous, False, rulesets_repo.generation(session)
        )
    _switch(session, name, record.id, current, "activate")
    generation = rulesets_repo.bump_generation(session)
    return Switch(name, version, record.sha256, previous, True, generation)


def rollback(session: Session, name: str) -> Switch:
    """Go back to the version that was active before the current one (again and again)."""
    rulesets_repo.lock_generation(session)
    current = rulesets_repo.current_activations(session).get(name)
    if current is None:
        raise NotFound(f"no active version of ruleset {name!r}")
    if current.previous_id is None:
        version = _version_of(session, current.ruleset_id)
        raise Conflict(
            f"nothing to roll back to: version {version} is the first active version of {name!r}"
        )
    target = rulesets_repo.get(session, current.previous_id)
    assert target is not None
    _check_compiles(target)
    # The switch that made the target active before: its own predecessor is where the next
    # rollback goes, so rollbacks walk back through the history instead of toggling.
    before = rulesets_repo.last_activation_of(session, name, target.id, current.id)
    _switch(
        session,
        name,
        target.id,
        current,
        "rollback",
        previous_id=before.previous_id if before is not None else None,
    )
    generation = rulesets_repo.bump_generation(session)
    previous = _version_of(session, current.ruleset_id)
    return Switch(name, target.version, target.sha256, previous, True, generation)


def _version_of(session: Session, record_id: int | None) -> int | None:
    if record_id is None:
        return None
    record = rulesets_repo.get(session, record_id)
    return record.version if record is not None else None


def _check_compiles(record: RulesetRecord) -> None:
    """Never switch to a text this code cannot load (stored by an older release, say)."""
    try:
        load_ruleset_text(record.content, stored_name(record))
    except RuleFileError as exc:
        raise rule_file_problems(exc) from None


# -- reading -----------------------------------------------------------------------------------


@dataclass
class StoredVersion:
    record: RulesetRecord
    active: bool
    activated_at: datetime | None


def list_versions(session: Session, name: str) -> list[StoredVersion]:
    """Every stored version of ``name``, oldest first, saying which one is active."""
    records = rulesets_repo.versions(session, name)
    if not records:
        raise NotFound(f"no stored ruleset named {name!r}")
    active = rulesets_repo.current_activations(session).get(name)
    last_switch: dict[int, datetime] = {}
    for activation in rulesets_repo.activations(session, name):
        last_switch[activation.ruleset_id] = activation.activated_at
    return [
        StoredVersion(
            record,
            active is not None and active.ruleset_id == record.id,
            last_switch.get(record.id),
        )
        for record in records
    ]


def get_version(session: Session, name: str, version: int) -> StoredVersion:
    record = rulesets_repo.by_version(session, name, version)
    if record is None:
        raise NotFound(f"no stored version {version} of ruleset {name!r}")
    return next(s for s in list_versions(session, name) if s.record.id == record.id)


def diff_versions(session: Session, name: str, old: int, new: int) -> str:
    """A unified diff of the YAML text of two stored versions ("" when they are the same)."""
    before = rulesets_repo.by_version(session, name, old)
    after = rulesets_repo.by_version(session, name, new)
    for version, record in ((old, before), (new, after)):
        if record is None:
            raise NotFound(f"no stored version {version} of ruleset {name!r}")
    assert before is not None and after is not None
    return "".join(
        difflib.unified_diff(
            _lines(before.content),
            _lines(after.content),
            fromfile=f"{name} v{old}",
            tofile=f"{name} v{new}",
        )
    )


def _lines(text: str) -> list[str]:
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n\\ No newline at end of file\n"
    return lines


def get_ruleset(registry: RulesetRegistry, name: str) -> LoadedRuleset:
    loaded = registry.rulesets.get(name)
    if loaded is None:
        raise NotFound(f"no active ruleset named {name!r}")
    return loaded


# -- start-up ----------------------------------------------------------------------------------


def record_rulesets(session: Session, registry: RulesetRegistry) -> None:
    """At start-up: store the folder's rulesets, then serve what the database says is active.

    A changed file that kept its version number stops the start (``RegistryError``), as an
    invalid file does: the service never starts on a ruleset it cannot trace.
    """
    try:
        store_folder(session, registry.folder)
    except Conflict as exc:
        raise RegistryError(exc.detail) from None
    registry.refresh(session)


def start_following(
    session_factory: sessionmaker[Session], registry: RulesetRegistry, settings: Settings
) -> None:
    """Record the folder, load the active set, and poll for activations from then on."""
    in_transaction(session_factory, lambda session: record_rulesets(session, registry))
    registry.bind(session_factory, settings.ruleset_refresh_seconds)


async def follow_activations(registry: RulesetRegistry, stop: asyncio.Event) -> None:
    """Check the activation generation every refresh interval until ``stop`` is set.

    Requests that take the rulesets through the API's dependency check too; this loop makes a
    process follow activations even when no request asks (a batch writer holding the registry,
    an idle replica that will get traffic), so that "within seconds" holds for every path.
    """
    while not stop.is_set():
        if registry.refresh_due():
            await asyncio.to_thread(registry.refresh_if_due)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(0.05, registry.refresh_seconds / 2))
