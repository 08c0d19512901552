"""Switching ruleset versions and queueing the re-score that follows, in one transaction.

The activation and its re-score job are written together, so a job never exists for a switch
that did not happen, and a switch asked to re-score always has its job. The process that made
the switch refreshes its own rulesets at once; the other replicas follow within
``LEADSCORE_RULESET_REFRESH_SECONDS``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.config import Settings
from leadscore_api.service import jobs
from leadscore_api.service import rulesets as rulesets_service
from leadscore_api.service.jobs import JobView
from leadscore_api.service.rulesets import ReloadReport, RulesetRegistry, Switch
from leadscore_api.storage.unit_of_work import in_transaction


@dataclass
class Rescore:
    """Whether to queue a re-score of every lead after the switch, and with webhooks or not."""

    wanted: bool = False
    emit_webhooks: bool = False

    def queue(self, session: Session, reason: str) -> JobView | None:
        if not self.wanted:
            return None
        return jobs.create_rescore(session, emit_webhooks=self.emit_webhooks, reason=reason)


def _refresh(session_factory: sessionmaker[Session], registry: RulesetRegistry | None) -> None:
    if registry is not None:
        with session_factory() as session:
            registry.refresh(session)


def activate(
    session_factory: sessionmaker[Session],
    registry: RulesetRegistry | None,
    name: str,
    version: int,
    rescore: Rescore,
) -> tuple[Switch, JobView | None]:
    def work(session: Session) -> tuple[Switch, JobView | None]:
        switch = rulesets_service.activate(session, name, version)
        return switch, rescore.queue(session, f"activate {name} v{version}")

    result = in_transaction(session_factory, work)
    _refresh(session_factory, registry)
    return result


def rollback(
    session_factory: sessionmaker[Session],
    registry: RulesetRegistry | None,
    name: str,
    rescore: Rescore,
) -> tuple[Switch, JobView | None]:
    def work(session: Session) -> tuple[Switch, JobView | None]:
        switch = rulesets_service.rollback(session, name)
        return switch, rescore.queue(session, f"rollback {name} to v{switch.version}")

    result = in_transaction(session_factory, work)
    _refresh(session_factory, registry)
    return result


def reload(
    session_factory: sessionmaker[Session],
    registry: RulesetRegistry | None,
    settings: Settings,
    rescore: Rescore,
    *,
    activate: bool = True,
) -> tuple[ReloadReport, JobView | None]:
    """Validate the rules folder first (422 with ``FILE:LINE``), then store and activate
    (``activate=False``: store new versions only, for a backtest or a challenger)."""
    loaded = rulesets_service.load_folder(settings)

    def work(session: Session) -> tuple[ReloadReport, JobView | None]:
        report = rulesets_service.store_folder(session, loaded, activate=activate)
        return report, rescore.queue(session, "reload") if report.changed else None

    result = in_transaction(session_factory, work)
    _refresh(session_factory, registry)
    return result
