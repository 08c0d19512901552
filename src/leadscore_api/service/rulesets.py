"""The rulesets a service process scores with, loaded once at start-up.

Every loaded ruleset scores every lead; the primary one (``settings.primary_ruleset``) drives
the lead's letter, score, tier, stage and the published transitions, the others are shown
under ``models``. Each version is also recorded in the ``rulesets`` table so that history rows,
which name a ruleset version, can always be traced back to the exact text that produced them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from leadscore_api.config import Settings
from leadscore_api.errors import NotFound
from leadscore_api.scoring import LoadedRuleset, load_rules_dir
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.models import RulesetRecord
from leadscore_api.storage.repositories import rulesets as rulesets_repo


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
    """Store each loaded ruleset text once, and learn when it was first activated."""
    for loaded in registry.ordered():
        record = rulesets_repo.add_once(
            session,
            RulesetRecord(
                name=loaded.name,
                version=loaded.version,
                sha256=loaded.sha256,
                content=loaded.content,
                activated_at=utcnow(),
            ),
        )
        registry.activated_at[loaded.name] = record.activated_at


def get_ruleset(registry: RulesetRegistry, name: str) -> LoadedRuleset:
    loaded = registry.rulesets.get(name)
    if loaded is None:
        raise NotFound(f"no loaded ruleset named {name!r}")
    return loaded
