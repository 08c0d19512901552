"""Small builders for core tests: rulesets from YAML text, events from short tuples."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from typing import Any

from leadscore_api.scoring import LoadedRuleset, ScoringEvent, load_ruleset_text

T0 = datetime(2026, 6, 15, 10, 0, tzinfo=UTC)  # a Monday, 12:00 in Rome


def ruleset(text: str) -> LoadedRuleset:
    return load_ruleset_text(textwrap.dedent(text), "test.yaml")


def event(
    event_id: str,
    event_type: str,
    at: datetime | timedelta = T0,
    properties: dict[str, Any] | None = None,
    attributes: dict[str, Any] | None = None,
) -> ScoringEvent:
    when = T0 + at if isinstance(at, timedelta) else at
    return ScoringEvent(event_id, event_type, when, properties or {}, attributes or {})


def attrs(
    values: dict[str, Any], at: datetime | timedelta = T0 - timedelta(days=365)
) -> ScoringEvent:
    return event("attrs", "lead.attributes_updated", at, attributes=values)
