"""SQL of the A/B test: the declared challengers, their score rows, and the report's pairs.

A challenger's rows live in ``lead_scores`` (and ``score_snapshots``) under its own key,
``<name>@challenger``, so the incremental scoring path stores them like any ruleset's and the
lead's own columns, history and timers never see them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, delete, exists, func, select
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
    champion_score: float
    champion_letter: str | None
    champion_tier: str | None
    champion_stage: str | None
    challenger_score: float
    challenger_letter: str | None
    challenger_tier: str | None
    challenger_stage: str | None
    opportunity: bool


def pairs(
    session: Session, name: str, sha256: str, since: datetime, batch: int = 2000
) -> Iterator[PairRow]:
    """The leads scored by both since ``since`` (the challenger's row is of its text ``sha256``),
    by lead id, streamed."""
    champion = aliased(LeadScore)
    challenger = aliased(LeadScore)
    converted = exists().where(
        Outcome.lead_id == champion.lead_id, Outcome.type.in_(OPPORTUNITY_TYPES)
    )
    statement = (
        select(
            champion.lead_id,
            champion.ruleset_version,
            func.coalesce(champion.summary["score"].as_float(), 0.0),
            champion.summary["letter"].as_string(),
            champion.summary["tier"].as_string(),
            champion.summary["stage"].as_string(),
            func.coalesce(challenger.summary["score"].as_float(), 0.0),
            challenger.summary["letter"].as_string(),
            challenger.summary["tier"].as_string(),
            challenger.summary["stage"].as_string(),
            converted,
        )
        .join(
            challenger,
            and_(
                challenger.lead_id == champion.lead_id,
                challenger.ruleset_name == score_key(name),
            ),
        )
        .where(
            champion.ruleset_name == name,
            challenger.ruleset_sha256 == sha256,
            challenger.updated_at >= since,
        )
        .order_by(champion.lead_id)
    )
    result = session.execute(statement.execution_options(yield_per=batch))
    for row in result:
        yield PairRow(
            lead_id=row[0],
            champion_version=int(row[1]),
            champion_score=float(row[2]),
            champion_letter=row[3],
            champion_tier=row[4],
            champion_stage=row[5],
            challenger_score=float(row[6]),
            challenger_letter=row[7],
            challenger_tier=row[8],
            challenger_stage=row[9],
            opportunity=bool(row[10]),
        )
