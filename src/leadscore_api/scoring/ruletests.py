"""Rule tests: small scenarios that rule authors write beside their rules and run before publishing.

A scenario names a lead's attributes and a few events (absolute ``at`` times, or ``ago``
relative to ``as_of``, optionally repeated), and the results it expects. Times default to a
fixed ``as_of`` so a scenario gives the same answer on every machine and every day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from leadscore_api.scoring.conditions import compile_operators
from leadscore_api.scoring.durations import parse_duration
from leadscore_api.scoring.engine import ScoreResult, ScoringEvent
from leadscore_api.scoring.loader import LoadedRuleset
from leadscore_api.scoring.model import Operators, RuleTest

DEFAULT_AS_OF = datetime(2026, 6, 15, 10, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Mismatch:
    what: str
    expected: Any
    actual: Any

    def __str__(self) -> str:
        return f"{self.what}: expected {self.expected!r}, got {self.actual!r}"


@dataclass(frozen=True)
class TestOutcome:
    __test__ = False

    ruleset: str
    name: str
    mismatches: list[Mismatch]
    result: ScoreResult | None
    error: str | None = None

    @property
    def passed(self) -> bool:
        return not self.mismatches and self.error is None


def parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"time {text!r} needs a zone, e.g. 2026-06-15T10:00:00Z")
    return value.astimezone(UTC)


def scenario_events(test: RuleTest, as_of: datetime) -> list[ScoringEvent]:
    """The scenario's events with their times resolved; lead attributes come first."""
    timed: list[tuple[datetime, str, Any]] = []
    expanded = [(i, k, e) for i, e in enumerate(test.events) for k in range(e.repeat)]
    for position, (i, k, event) in enumerate(expanded):
        if event.at is not None:
            base = parse_time(event.at)
        elif event.ago is not None:
            base = as_of - timedelta(seconds=parse_duration(event.ago).seconds)
        else:
            base = as_of - timedelta(minutes=len(expanded) - position)
        at = base - timedelta(seconds=parse_duration(event.every).seconds * k)
        timed.append((at, event.id or f"t{i:03d}-{k:03d}", event))
    start = min([t for t, _, _ in timed] + [as_of]) - timedelta(minutes=1)
    events = [ScoringEvent("t-lead", "lead.attributes_updated", start, {}, dict(test.lead))]
    events += [
        ScoringEvent(eid, e.type, at, dict(e.properties), dict(e.attributes))
        for at, eid, e in timed
    ]
    return events


def _expect(what: str, expected: Any, actual: Any, out: list[Mismatch]) -> None:
    if isinstance(expected, dict):
        predicate, _ = compile_operators(Operators.model_validate(expected))
        if not predicate(actual):
            out.append(Mismatch(what, expected, actual))
    elif isinstance(expected, int | float) and not isinstance(expected, bool):
        if actual is None or abs(float(actual) - float(expected)) > 1e-6 * max(1.0, abs(expected)):
            out.append(Mismatch(what, expected, actual))
    elif isinstance(expected, list):
        if sorted(map(str, expected)) != sorted(map(str, actual or [])):
            out.append(Mismatch(what, expected, actual))
    elif expected != actual:
        out.append(Mismatch(what, expected, actual))


def run_test(loaded: LoadedRuleset, test: RuleTest) -> TestOutcome:
    try:
        as_of = parse_time(test.as_of) if test.as_of else DEFAULT_AS_OF
        events = scenario_events(test, as_of)
        _, result = loaded.scorer.replay(events, as_of)
    except (ValueError, TypeError) as exc:
        return TestOutcome(loaded.name, test.name, [], None, str(exc))
    summary = result.to_dict()
    mismatches: list[Mismatch] = []
    for key, expected in test.expect.items():
        if key == "components":
            for name, value in expected.items():
                _expect(f"components.{name}", value, result.components.get(name), mismatches)
        elif key == "stages_reached":
            _expect(key, expected, list(result.stages_reached), mismatches)
        else:
            _expect(key, expected, summary.get(key), mismatches)
    return TestOutcome(loaded.name, test.name, mismatches, result)
