"""The rulesets a service process scores with, loaded once at start-up.

Every loaded ruleset scores every lead; the primary one (``settings.primary_ruleset``) drives
the lead's letter, score, tier, stage and the published transitions, the others are shown
under ``models``. Each version is also recorded in the ``rulesets`` table so that history rows,
which name a ruleset version, can always be traced back to the exact text that produced them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from leadscore_api.config import Settings
from leadscore_api.scoring import LoadedRuleset, load_rules_dir
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.models import RulesetRecord


class RegistryError(Exception):
    """The configured rules cannot be served (e.g. the primary ruleset is missing)."""


@dataclass
class RulesetRegistry:
    rulesets: dict[str, LoadedRuleset]
    primary_name: str
    #: When each loaded ruleset version was first activated (filled by :func:`record_rulesets`).
    activated_at: dict[str, datetime] = field(default_factory=dict)

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

    @property
    def primary(self) -> LoadedRuleset:
        return self.rulesets[self.primary_name]

    def ordered(self) -> list[LoadedRuleset]:
        """The primary first, then the others by name (a stable order for locks and output)."""
        others = sorted(name for name in self.rulesets if name != self.primary_name)
        return [self.primary, *(self.rulesets[name] for name in others)]


def record_rulesets(session: Session, registry: RulesetRegistry) -> None:
    """Insert each loaded ruleset version once, and learn when it was first activated.

    Replicas starting together may race to insert the same (name, sha256); the loser's
    unique-constraint error is ignored because the row it wanted exists.
    """
    for loaded in registry.ordered():
        existing = session.scalar(
            select(RulesetRecord).where(
                RulesetRecord.name == loaded.name, RulesetRecord.sha256 == loaded.sha256
            )
        )
        if existing is None:
            record = RulesetRecord(
                name=loaded.name,
                version=loaded.version,
                sha256=loaded.sha256,
                content=loaded.content,
                activated_at=utcnow(),
            )
            try:
                with session.begin_nested():
                    session.add(record)
            except IntegrityError:
                existing = session.scalar(
                    select(RulesetRecord).where(
                        RulesetRecord.name == loaded.name, RulesetRecord.sha256 == loaded.sha256
                    )
                )
                if existing is None:
                    raise
                record = existing
        else:
            record = existing
        registry.activated_at[loaded.name] = record.activated_at
