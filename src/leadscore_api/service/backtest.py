"""Backtest: replay a period's stored events under a candidate ruleset and the active one.

Nothing is written. Each lead with an event in the period is replayed from its first stored
event up to the end of the period under both rulesets (the pure core, exactly as a re-score
would), and the two sets of traces are summarised side by side with the CRM's outcomes
(:mod:`leadscore_api.scoring.backtest_metrics` says what each figure means).

The replay is CPU-bound. :func:`run_backtest` runs it in the calling thread, or, given the
database URL and ``workers > 1``, in a pool of processes that each read and replay one slice
of the leads (split by lead id), so the events are never shipped between processes.
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from multiprocessing import get_context
from typing import Any

from sqlalchemy.orm import Session

from leadscore_api.errors import BadRequest, InvalidInput, NotFound
from leadscore_api.scoring import LoadedRuleset, RuleFileError, load_ruleset_text
from leadscore_api.scoring.backtest_metrics import stage_changes, summarize
from leadscore_api.scoring.backtest_trace import LeadTrace, TracingScorer, trace_lead
from leadscore_api.storage.db import make_engine, make_session_factory
from leadscore_api.storage.repositories import backtest as backtest_repo

#: Leads listed by name among those whose stage would change (the count is always complete).
DEFAULT_CHANGES_LIMIT = 100


#: RFC 3339 date-time, with an optional zone (a missing zone gets its own message).
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?$", re.ASCII
)


class BadPeriod(BadRequest):
    """``from``/``to`` that do not parse or do not make a period."""

    problem_type = "bad-period"
    title = "Bad backtest period"


@dataclass(frozen=True)
class Period:
    start: datetime | None
    end: datetime


def parse_period(start: str | None, end: str | None, *, now: datetime | None = None) -> Period:
    """RFC 3339 ``from``/``to`` (``to`` defaults to now); :class:`BadPeriod` names the field."""

    def one(name: str, text: str) -> datetime:
        try:
            if not _RFC3339.match(text):
                raise ValueError(text)
            value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise BadPeriod(
                f"{name}: {text[:60]!r} is not an RFC 3339 time",
                errors=[{"field": name, "message": "not an RFC 3339 time"}],
            ) from None
        if value.tzinfo is None:
            raise BadPeriod(
                f"{name}: a time zone is required (e.g. Z or +01:00)",
                errors=[{"field": name, "message": "a time zone is required"}],
            )
        return value.astimezone(UTC)

    end_at = one("to", end) if end else (now or datetime.now(UTC))
    start_at = one("from", start) if start else None
    if start_at is not None and start_at >= end_at:
        raise BadPeriod(
            "from must be before to",
            errors=[{"field": "from", "message": "must be before to"}],
        )
    return Period(start_at, end_at)


def candidate_from_text(text: str, filename: str = "candidate.yaml") -> LoadedRuleset:
    """The candidate ruleset in ``text``; a 422 listing ``FILE:LINE: message`` otherwise."""
    if "\x00" in text:
        raise InvalidInput.field("content", "contains a NUL character")
    try:
        return load_ruleset_text(text, filename)
    except RuleFileError as exc:
        raise InvalidInput(
            "the candidate ruleset is not valid:\n" + str(exc),
            errors=[{"field": "content", "message": str(problem)} for problem in exc.problems],
        ) from None


def candidate_from_store(session: Session, name: str, version: int) -> LoadedRuleset:
    """A ruleset version the service stored (``rulesets`` table)."""
    record = backtest_repo.stored_ruleset(session, name, version)
    if record is None:
        raise NotFound(f"no stored ruleset {name!r} version {version}")
    return load_ruleset_text(record.content, f"{name}@{version}")


@dataclass
class SliceResult:
    """What one worker replayed: its events count and both rulesets' traces."""

    events: int = 0
    active: list[LeadTrace] = field(default_factory=list)
    candidate: list[LeadTrace] = field(default_factory=list)


def replay_slice(
    session: Session,
    active: TracingScorer,
    candidate: TracingScorer,
    period: Period,
    *,
    low: str | None = None,
    high: str | None = None,
    with_features: bool = False,
) -> SliceResult:
    result = SliceResult()
    for lead_id, events in backtest_repo.stream_lead_events(
        session, period.start, period.end, low=low, high=high
    ):
        result.events += len(events)
        trace = trace_lead(active, lead_id, events, period.end, with_features=with_features)
        if trace is None:
            continue
        result.active.append(trace)
        if candidate is not active:
            trace = trace_lead(candidate, lead_id, events, period.end, with_features=with_features)
        if trace is not None:
            result.candidate.append(trace)
    return result


def _worker_slice(
    database_url: str,
    active_text: str,
    candidate_text: str,
    period: Period,
    low: str | None,
    high: str | None,
    with_features: bool,
) -> SliceResult:
    """One process of a parallel backtest: its own engine, scorers and slice of leads."""
    engine = make_engine(database_url)
    try:
        factory = make_session_factory(engine, read_only=True)
        active = TracingScorer(load_ruleset_text(active_text, "active").ruleset)
        candidate = (
            active
            if candidate_text == active_text
            else TracingScorer(load_ruleset_text(candidate_text, "candidate").ruleset)
        )
        with factory() as session:
            return replay_slice(
                session,
                active,
                candidate,
                period,
                low=low,
                high=high,
                with_features=with_features,
            )
    finally:
        engine.dispose()


def replay(
    session: Session,
    active: LoadedRuleset,
    candidate: LoadedRuleset,
    period: Period,
    *,
    workers: int = 1,
    database_url: str | None = None,
    with_features: bool = False,
) -> SliceResult:
    """Trace every lead of the period under both rulesets, serially or over ``workers`` processes."""
    if workers <= 1 or database_url is None:
        scorer = TracingScorer(active.ruleset)
        # The same text (a stored version that is the active one) is replayed once.
        other = scorer if candidate.sha256 == active.sha256 else TracingScorer(candidate.ruleset)
        return replay_slice(session, scorer, other, period, with_features=with_features)
    bounds = backtest_repo.lead_bounds(session, period.end, workers)
    merged = SliceResult()
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(
                _worker_slice,
                database_url,
                active.content,
                candidate.content,
                period,
                low,
                high,
                with_features,
            )
            for low, high in pairwise(bounds)
        ]
        for future in futures:
            part = future.result()
            merged.events += part.events
            merged.active.extend(part.active)
            merged.candidate.extend(part.candidate)
    return merged


def describe(loaded: LoadedRuleset) -> dict[str, Any]:
    return {"name": loaded.name, "version": loaded.version, "sha256": loaded.sha256}


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def report(
    active: LoadedRuleset,
    candidate: LoadedRuleset,
    period: Period,
    replayed: SliceResult,
    *,
    changes_limit: int = DEFAULT_CHANGES_LIMIT,
    elapsed: float | None = None,
) -> dict[str, Any]:
    """The side-by-side report (the JSON the API answers; the CLI prints it as a table or CSV)."""
    active_stages = list(active.ruleset.stages)
    candidate_stages = list(candidate.ruleset.stages)
    return {
        "period": {"from": _iso(period.start), "to": _iso(period.end)},
        "leads": len(replayed.active),
        "events": replayed.events,
        "rulesets": {"active": describe(active), "candidate": describe(candidate)},
        "active": summarize(replayed.active, active_stages),
        "candidate": summarize(replayed.candidate, candidate_stages),
        "stage_changes": stage_changes(replayed.active, replayed.candidate, changes_limit),
        "elapsed_seconds": None if elapsed is None else round(elapsed, 3),
    }


def run_backtest(
    session: Session,
    active: LoadedRuleset,
    candidate: LoadedRuleset,
    period: Period,
    *,
    changes_limit: int = DEFAULT_CHANGES_LIMIT,
    workers: int = 1,
    database_url: str | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    replayed = replay(
        session,
        active,
        candidate,
        period,
        workers=workers,
        database_url=database_url,
    )
    return report(
        active,
        candidate,
        period,
        replayed,
        changes_limit=changes_limit,
        elapsed=time.perf_counter() - started,
    )


def default_workers() -> int:
    """One process per core, at most 4: the replay is CPU-bound."""
    return max(1, min(4, os.cpu_count() or 1))
