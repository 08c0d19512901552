"""SQL of the A/B test: the declared challengers, their score rows, and the report's pairs.

A challenger's rows live in ``lead_scores`` (and ``score_snapshots``) under its own key,
``<name>@challenger``, so the incremental scoring path stores them like any ruleset's and the
lead's own columns, history and timers never see them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Subquery, and_, case, delete, func, or_, select
from sqlalchemy.orm import Session, aliased

from leadscore_api.storage.lifecycle_models import RulesetChallenger
from leadscore_api.storage.models import LeadScore, Outcome, RulesetRecord
from leadscore_api.storage.snapshot_models import ScoreSnapshot

#: CRM outcomes that count as "became an opportunity" (as the backtest counts them).
OPPORTUNITY_TYPES = ("opportunity.created", "deal.won")


#: What a challenger's rows are named by: ``<name>@challenger``.
SUFFIX = "@challenger"


def score_key(name: str) -> str:
    """The ``ruleset_name`` a challenger's rows are stored under."""
    return f"{name}{SUFFIX}"


def current(session: Session) -> list[tuple[RulesetChallenger, RulesetRecord]]:
    """Every running challenger with its stored text, by name."""
    rows = session.execute(
        select(RulesetChallenger, RulesetRecord)
        .join(RulesetRecord, RulesetRecord.id == RulesetChallenger.ruleset_id)
        .order_by(RulesetChallenger.name)
    )
    return [(challenger, record) for challenger, record in rows]


def get(session: Session, name: str) -> tuple[RulesetChallenger, RulesetRecord] | None:
    row = session.execute(
        select(RulesetChallenger, RulesetRecord)
        .join(RulesetRecord, RulesetRecord.id == RulesetChallenger.ruleset_id)
        .where(RulesetChallenger.name == name)
    ).first()
    return None if row is None else (row[0], row[1])


def put(session: Session, name: str, ruleset_id: int, started_at: datetime) -> None:
    """Start (or restart with another version) the challenge of ``name``."""
    row = session.get(RulesetChallenger, name)
    if row is None:
        session.add(RulesetChallenger(name=name, ruleset_id=ruleset_id, started_at=started_at))
    else:
        row.ruleset_id = ruleset_id
        row.started_at = started_at
    session.flush()


def remove(session: Session, name: str) -> None:
    session.execute(
        delete(RulesetChallenger).where(RulesetChallenger.name == name),
        execution_options={"synchronize_session": False},
    )


def drop_scores(session: Session, name: str) -> None:
    """Forget every lead's state under the challenger key of ``name`` (and its snapshots).

    A state left by an earlier challenge missed the events that came while none ran; without
    a row, the next event replays the lead's stored events instead.
    """
    key = score_key(name)
    for table in (LeadScore, ScoreSnapshot):
        session.execute(
            delete(table).where(table.ruleset_name == key),
            execution_options={"synchronize_session": False},
        )


@dataclass(frozen=True)
class PairRow:
    """One lead as the champion and the challenger left it, and whether it converted."""

    lead_id: str
    champion_version: int
    champion_score: int
    champion_letter: str | None
    champion_tier: str | None
    champion_stage: str | None
    challenger_score: int
    challenger_letter: str | None
    challenger_tier: str | None
    challenger_stage: str | None
    opportunity: bool


@dataclass(frozen=True)
class LabelGroup:
    """How many compared leads share these letters, tiers, stages and outcome."""

    champion_version: int
    champion_letter: str | None
    champion_tier: str | None
    champion_stage: str | None
    challenger_letter: str | None
    challenger_tier: str | None
    challenger_stage: str | None
    opportunity: bool
    leads: int


@dataclass(frozen=True)
class ScoreGroup:
    """How many compared leads have these two scores and this outcome."""

    champion_score: int
    challenger_score: int
    opportunity: bool
    leads: int


def _pairs(name: str, sha256: str, since: datetime) -> Subquery:
    """The leads scored by both since ``since`` (the challenger's rows of text ``sha256``):
    one row per lead, the summaries' fields as plain columns."""
    champion = aliased(LeadScore)
    challenger = aliased(LeadScore)
    converted = (
        select(Outcome.lead_id).where(Outcome.type.in_(OPPORTUNITY_TYPES)).distinct().subquery()
    )
    return (
        select(
            champion.lead_id.label("lead_id"),
            champion.ruleset_version.label("c_version"),
            func.coalesce(champion.summary["score"].as_float(), 0.0).label("c_score"),
            champion.summary["letter"].as_string().label("c_letter"),
            champion.summary["tier"].as_string().label("c_tier"),
            champion.summary["stage"].as_string().label("c_stage"),
            func.coalesce(challenger.summary["score"].as_float(), 0.0).label("x_score"),
            challenger.summary["letter"].as_string().label("x_letter"),
            challenger.summary["tier"].as_string().label("x_tier"),
            challenger.summary["stage"].as_string().label("x_stage"),
            case((converted.c.lead_id.is_(None), 0), else_=1).label("opportunity"),
        )
        .join(
            challenger,
            and_(
                challenger.lead_id == champion.lead_id,
                challenger.ruleset_name == score_key(name),
            ),
        )
        .outerjoin(converted, converted.c.lead_id == champion.lead_id)
        .where(
            champion.ruleset_name == name,
            challenger.ruleset_sha256 == sha256,
            challenger.updated_at >= since,
        )
        .subquery("pairs")
    )


def label_groups(session: Session, name: str, sha256: str, since: datetime) -> list[LabelGroup]:
    """The compared leads counted by both sides' letter, tier and stage and by outcome: a few
    dozen rows whatever the number of leads."""
    pairs = _pairs(name, sha256, since)
    keys = (
        pairs.c.c_version,
        pairs.c.c_letter,
        pairs.c.c_tier,
        pairs.c.c_stage,
        pairs.c.x_letter,
        pairs.c.x_tier,
        pairs.c.x_stage,
        pairs.c.opportunity,
    )
    rows = session.execute(select(*keys, func.count()).group_by(*keys))
    return [
        LabelGroup(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), int(r[8]))
        for r in rows
    ]


def score_groups(session: Session, name: str, sha256: str, since: datetime) -> list[ScoreGroup]:
    """The compared leads counted by both scores and outcome (at most 101 × 101 × 2 rows)."""
    pairs = _pairs(name, sha256, since)
    keys = (pairs.c.c_score, pairs.c.x_score, pairs.c.opportunity)
    rows = session.execute(select(*keys, func.count()).group_by(*keys))
    return [ScoreGroup(int(r[0]), int(r[1]), bool(r[2]), int(r[3])) for r in rows]


def disagreements(
    session: Session, name: str, sha256: str, since: datetime, limit: int
) -> list[PairRow]:
    """The first ``limit`` compared leads, by id, whose stage or tier differs."""
    if limit <= 0:
        return []
    p = _pairs(name, sha256, since)
    rows = session.execute(
        select(p)
        .where(
            or_(p.c.c_stage.is_distinct_from(p.c.x_stage), p.c.c_tier.is_distinct_from(p.c.x_tier))
        )
        .order_by(p.c.lead_id)
        .limit(limit)
    )
    return [
        PairRow(
            lead_id=r.lead_id,
            champion_version=int(r.c_version),
            champion_score=int(r.c_score),
            champion_letter=r.c_letter,
            champion_tier=r.c_tier,
            champion_stage=r.c_stage,
            challenger_score=int(r.x_score),
            challenger_letter=r.x_letter,
            challenger_tier=r.x_tier,
            challenger_stage=r.x_stage,
            opportunity=bool(r.opportunity),
        )
        for r in rows
    ]
