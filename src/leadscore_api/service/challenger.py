"""A/B tests of rulesets (champion/challenger): declare, stop, report, promote.

A challenger is a stored version of an active ruleset's name, declared in the database so
every replica scores it beside the active version (the champion) on every incoming event. Its
results are stored under ``<name>@challenger`` and acted on nowhere; the report compares the
two on the leads both scored since the challenge began, as CRM outcomes arrive, and promoting
activates the challenger's version (with a re-score if asked) and ends the challenge, in one
transaction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.errors import Conflict, NotFound
from leadscore_api.scoring import RuleFileError
from leadscore_api.scoring.backtest_metrics import BAND_WIDTH, auc, band_of
from leadscore_api.scoring.loader import load_ruleset_text
from leadscore_api.service import rulesets as rulesets_service
from leadscore_api.service.jobs import JobView
from leadscore_api.service.lifecycle import Rescore
from leadscore_api.service.rulesets import RulesetRegistry, Switch
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.models import RulesetRecord
from leadscore_api.storage.repositories import challenger as challenger_repo
from leadscore_api.storage.repositories import rulesets as rulesets_repo
from leadscore_api.storage.repositories.challenger import LabelGroup, PairRow, ScoreGroup
from leadscore_api.storage.unit_of_work import in_transaction

#: Disagreeing leads listed in a report at most (the count covers them all).
DISAGREEMENTS_LIMIT = 100


@dataclass
class Challenge:
    """A running challenger and the champion it is compared with."""

    name: str
    version: int
    sha256: str
    started_at: datetime
    champion_version: int
    #: False when the same version was already the challenger (nothing changed).
    changed: bool = True
    generation: int = 0


def _active_version(session: Session, name: str) -> RulesetRecord:
    current = rulesets_repo.current_activations(session).get(name)
    record = rulesets_repo.get(session, current.ruleset_id) if current is not None else None
    if record is None:
        raise NotFound(
            f"no active ruleset named {name!r} to challenge",
            errors=[{"field": "name", "message": f"no active ruleset named {name!r}"}],
        )
    return record


def _check_compiles(record: RulesetRecord) -> None:
    try:
        load_ruleset_text(record.content, rulesets_service.stored_name(record))
    except RuleFileError as exc:
        raise rulesets_service.rule_file_problems(exc) from None


def declare(session: Session, name: str, version: int) -> Challenge:
    """Make stored ``version`` of the active ruleset ``name`` its challenger (on every replica).

    Another version already challenging is replaced and the test starts again; the same one
    is left running. Score rows of an earlier challenge are dropped, since they missed the
    events that came meanwhile: each lead is replayed from its stored events on its next one.
    """
    rulesets_repo.lock_generation(session)
    champion = _active_version(session, name)
    record = rulesets_repo.by_version(session, name, version)
    if record is None:
        raise NotFound(
            f"no stored version {version} of ruleset {name!r}",
            errors=[{"field": "version", "message": f"no stored version {version} of {name!r}"}],
        )
    if record.id == champion.id:
        raise Conflict(
            f"version {version} of {name!r} is the active one; a challenger must differ",
            errors=[{"field": "version", "message": "is the active version"}],
        )
    _check_compiles(record)
    running = challenger_repo.get(session, name)
    if running is not None and running[1].id == record.id:
        return Challenge(
            name,
            version,
            record.sha256,
            running[0].started_at,
            champion.version,
            changed=False,
            generation=rulesets_repo.generation(session),
        )
    started_at = utcnow()
    challenger_repo.drop_scores(session, name)
    challenger_repo.put(session, name, record.id, started_at)
    generation = rulesets_repo.bump_generation(session)
    return Challenge(
        name, version, record.sha256, started_at, champion.version, generation=generation
    )


def _running(session: Session, name: str) -> tuple[Challenge, RulesetRecord]:
    found = challenger_repo.get(session, name)
    if found is None:
        raise NotFound(
            f"no challenger of ruleset {name!r} is running",
            errors=[{"field": "name", "message": f"no challenger of {name!r} is running"}],
        )
    challenge, record = found
    champion = _active_version(session, name)
    return (
        Challenge(name, record.version, record.sha256, challenge.started_at, champion.version),
        record,
    )


def get(session: Session, name: str) -> Challenge:
    return _running(session, name)[0]


def stop(session: Session, name: str) -> Challenge:
    """End the challenge of ``name``; its score rows go with it."""
    rulesets_repo.lock_generation(session)
    challenge, _record = _running(session, name)
    challenger_repo.remove(session, name)
    challenger_repo.drop_scores(session, name)
    challenge.generation = rulesets_repo.bump_generation(session)
    return challenge


def _refresh(session_factory: sessionmaker[Session], registry: RulesetRegistry | None) -> None:
    if registry is not None:
        with session_factory() as session:
            registry.refresh(session)


def start(
    session_factory: sessionmaker[Session],
    registry: RulesetRegistry | None,
    name: str,
    version: int,
) -> Challenge:
    challenge = in_transaction(session_factory, lambda s: declare(s, name, version))
    _refresh(session_factory, registry)
    return challenge


def end(
    session_factory: sessionmaker[Session], registry: RulesetRegistry | None, name: str
) -> Challenge:
    challenge = in_transaction(session_factory, lambda s: stop(s, name))
    _refresh(session_factory, registry)
    return challenge


def promote(
    session_factory: sessionmaker[Session],
    registry: RulesetRegistry | None,
    name: str,
    rescore: Rescore,
) -> tuple[Switch, JobView | None]:
    """Activate the challenger's version and end the challenge, in one transaction."""

    def work(session: Session) -> tuple[Switch, JobView | None]:
        challenge = stop(session, name)
        switch = rulesets_service.activate(session, name, challenge.version)
        switch.generation = rulesets_repo.generation(session)
        job = rescore.queue(session, f"promote challenger {name} v{challenge.version}")
        return switch, job

    result = in_transaction(session_factory, work)
    _refresh(session_factory, registry)
    return result


# -- the report --------------------------------------------------------------------------------


@dataclass
class _Side:
    """One ruleset's figures over the compared leads, from the grouped rows."""

    version: int
    letter: Counter[str] = field(default_factory=Counter)
    tier: Counter[str] = field(default_factory=Counter)
    stage: Counter[str] = field(default_factory=Counter)
    band_leads: Counter[str] = field(default_factory=Counter)
    band_opportunities: Counter[str] = field(default_factory=Counter)
    #: (score, became an opportunity) → leads: the AUC's input, at most 101 × 2 entries.
    scores: Counter[tuple[int, bool]] = field(default_factory=Counter)

    def count(self, letter: str | None, tier: str | None, stage: str | None, leads: int) -> None:
        self.letter[_key(letter)] += leads
        self.tier[_key(tier)] += leads
        self.stage[_key(stage)] += leads

    def score(self, score: int, opportunity: bool, leads: int) -> None:
        band = band_of(score)
        self.band_leads[band] += leads
        if opportunity:
            self.band_opportunities[band] += leads
        self.scores[(score, opportunity)] += leads

    def figures(self) -> dict[str, Any]:
        values = [s for (s, _o), n in sorted(self.scores.items()) for _ in range(n)]
        labels = [o for (_s, o), n in sorted(self.scores.items()) for _ in range(n)]
        area = auc(values, labels)
        return {
            "version": self.version,
            "counts": {
                "letter": dict(sorted(self.letter.items())),
                "tier": dict(sorted(self.tier.items())),
                "stage": dict(sorted(self.stage.items())),
            },
            "conversion_by_band": [
                {
                    "band": band,
                    "leads": self.band_leads[band],
                    "opportunities": self.band_opportunities[band],
                    "conversion": _rate(self.band_opportunities[band], self.band_leads[band]),
                }
                for band in (band_of(low) for low in range(0, 100, BAND_WIDTH))
            ],
            "auc": None if area is None else round(area, 4),
        }


def _key(value: str | None) -> str:
    return "none" if value is None else value


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _side_view(
    stage: str | None, tier: str | None, letter: str | None, score: int
) -> dict[str, Any]:
    return {"stage": stage, "tier": tier, "letter": letter, "score": score}


def compare(
    challenge: Challenge,
    labels: Iterable[LabelGroup],
    scores: Iterable[ScoreGroup],
    listed: Iterable[PairRow],
    limit: int,
) -> dict[str, Any]:
    """Champion and challenger side by side on the same leads (pure: grouped rows in)."""
    champion, challenger = _Side(challenge.champion_version), _Side(challenge.version)
    leads = converted = disagree = 0
    champion_versions: Counter[int] = Counter()
    moves: Counter[tuple[str, str]] = Counter()
    for group in labels:
        leads += group.leads
        converted += group.leads if group.opportunity else 0
        champion_versions[group.champion_version] += group.leads
        champion.count(
            group.champion_letter, group.champion_tier, group.champion_stage, group.leads
        )
        challenger.count(
            group.challenger_letter, group.challenger_tier, group.challenger_stage, group.leads
        )
        if group.champion_stage != group.challenger_stage:
            moves[(_key(group.champion_stage), _key(group.challenger_stage))] += group.leads
        if (group.champion_stage, group.champion_tier) != (
            group.challenger_stage,
            group.challenger_tier,
        ):
            disagree += group.leads
    for by_score in scores:
        champion.score(by_score.champion_score, by_score.opportunity, by_score.leads)
        challenger.score(by_score.challenger_score, by_score.opportunity, by_score.leads)
    items = [
        {
            "lead_id": row.lead_id,
            "opportunity": row.opportunity,
            "champion": _side_view(
                row.champion_stage, row.champion_tier, row.champion_letter, row.champion_score
            ),
            "challenger": _side_view(
                row.challenger_stage,
                row.challenger_tier,
                row.challenger_letter,
                row.challenger_score,
            ),
        }
        for row in listed
    ]
    return {
        "name": challenge.name,
        "started_at": challenge.started_at,
        "leads": leads,
        "opportunities": converted,
        "conversion": _rate(converted, leads),
        # Leads not yet re-scored after an activation may still carry an older champion.
        "champion_versions": dict(sorted(champion_versions.items())),
        "champion": champion.figures(),
        "challenger": challenger.figures(),
        "disagreements": {
            "count": disagree,
            "by_stage_move": [
                {"from": a, "to": b, "leads": n} for (a, b), n in sorted(moves.items())
            ],
            "items": items,
            "limit": limit,
        },
    }


def report(session: Session, name: str, limit: int = DISAGREEMENTS_LIMIT) -> dict[str, Any]:
    """The A/B report of the running challenger of ``name``: SQL aggregates of the stored rows
    (grouped by labels, by scores) and one bounded list, so its cost does not grow with what
    it sends back."""
    challenge, _record = _running(session, name)
    args = (session, name, challenge.sha256, challenge.started_at)
    return compare(
        challenge,
        challenger_repo.label_groups(*args),
        challenger_repo.score_groups(*args),
        challenger_repo.disagreements(*args, limit),
        limit,
    )
