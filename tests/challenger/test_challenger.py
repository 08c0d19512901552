"""A/B test of rulesets: a challenger scores every event beside the champion and acts on nothing.

Two applications ("replicas") share one database. The ruleset gives a page view 10 points in
v1 (the champion) and 20 in v2 (the challenger), MQL at 50, hot at 75: three views make a lead
an MQL under v2 only, five make it hot under v2 only, so anything the challenger did on its
own would show as a transition, an outbox message, a history row or a changed lead.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from tests.api.helpers import event
from tests.lifecycle.helpers import (
    PRIMARY,
    TEMPLATE,
    Replicas,
    active_version,
    cli_env,
    eventually,
    post_events,
    two_replicas,
    visits,
    write_rules,
)

from leadscore_api.cli import main
from leadscore_api.scoring.backtest_metrics import auc, band_of
from leadscore_api.scoring.loader import load_ruleset_text
from leadscore_api.service.rulesets import RulesetRegistry
from leadscore_api.storage.db import make_engine, make_session_factory
from leadscore_api.storage.delivery_models import OutboxMessage
from leadscore_api.storage.models import LeadScore, ScoreChange
from leadscore_api.storage.repositories import leads as leads_repo

CHALLENGER_KEY = f"{PRIMARY}@challenger"


@pytest.fixture
def replicas(database_url: str, tmp_path: Path) -> Iterator[Replicas]:
    """v1 active, v2 stored (reloaded, then v1 activated again)."""
    with two_replicas(database_url, tmp_path) as both:
        a, b = both.a, both.b
        write_rules(both.rules, version=2, visit=20)
        assert a.post("/v1/rulesets/reload").status_code == 200
        response = a.post(f"/v1/rulesets/{PRIMARY}/activate", params={"version": 1})
        assert response.status_code == 200, response.text
        eventually(lambda: active_version(b) == 1, what="replica b to serve v1")
        yield both


def _challenger_version(client: TestClient) -> int | None:
    registry: RulesetRegistry = client.app.state.registry  # type: ignore[attr-defined]
    loaded = registry.challengers.get(PRIMARY)
    return None if loaded is None else loaded.version


def _get(client: TestClient, path: str) -> Any:
    response = client.get(path)
    assert response.status_code == 200, response.text
    return response.json()


def _rows(database_url: str, statement: Any) -> list[Any]:
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            return list(session.execute(statement).all())
    finally:
        engine.dispose()


def _visible(client: TestClient, lead_id: str) -> tuple[Any, ...]:
    """What a user sees of a lead: its columns and history (timestamps left out)."""
    lead = _get(client, f"/v1/leads/{lead_id}")
    history = _get(client, f"/v1/leads/{lead_id}/history")["items"]
    return (
        lead["score"],
        lead["letter"],
        lead["tier"],
        lead["stage"],
        lead["ruleset"],
        lead.get("models"),
        [(h["current"]["stage"], h["current"]["score"]) for h in history],
    )


def _expected(database_url: str, lead_ids: list[str]) -> dict[str, Any]:
    """The report's figures, from a from-scratch replay of each lead's stored events."""
    v1 = load_ruleset_text(TEMPLATE.format(version=1, visit=10), "v1.yaml").scorer
    v2 = load_ruleset_text(TEMPLATE.format(version=2, visit=20), "v2.yaml").scorer
    engine = make_engine(database_url)
    now = datetime.now(UTC)
    counts: dict[str, dict[str, Counter[str]]] = {
        side: {d: Counter() for d in ("letter", "tier", "stage")}
        for side in ("champion", "challenger")
    }
    bands: dict[str, Counter[str]] = {"champion": Counter(), "challenger": Counter()}
    scores: dict[str, list[float]] = {"champion": [], "challenger": []}
    converted: list[bool] = []
    disagree = 0
    try:
        with make_session_factory(engine)() as session:
            for lead_id in sorted(lead_ids):
                events = leads_repo.lead_events(session, lead_id)
                won = any(e.type in ("opportunity.created", "deal.won") for e in events)
                converted.append(won)
                results = {
                    "champion": v1.replay(events, now)[1],
                    "challenger": v2.replay(events, now)[1],
                }
                for side, result in results.items():
                    for dimension in ("letter", "tier", "stage"):
                        value = getattr(result, dimension)
                        counts[side][dimension]["none" if value is None else value] += 1
                    bands[side][band_of(result.score)] += won
                    scores[side].append(result.score)
                a, b = results["champion"], results["challenger"]
                disagree += a.stage != b.stage or a.tier != b.tier
    finally:
        engine.dispose()
    return {
        "leads": len(lead_ids),
        "opportunities": sum(converted),
        "counts": {
            side: {d: dict(sorted(c.items())) for d, c in dims.items()}
            for side, dims in counts.items()
        },
        "band_opportunities": {side: +bands[side] for side in bands},
        "auc": {side: auc(scores[side], converted) for side in scores},
        "disagree": disagree,
    }


def test_the_challenger_scores_on_both_replicas_without_acting_and_its_report_matches_a_replay(
    replicas: Replicas,
) -> None:
    a, b = replicas.a, replicas.b
    url = replicas.settings.database_url
    response = a.post(
        "/v1/subscriptions", json={"url": "http://127.0.0.1:9/hook", "event_types": ["*"]}
    )
    assert response.status_code == 201, response.text

    # Before the challenge: a lead the challenger must replay, and a control lead whose
    # events are the same as a later one's.
    old = post_events(a, visits("old@example.it", 2))[-1]
    control = post_events(a, visits("control@example.it", 5))[-1]

    response = a.post(f"/v1/rulesets/{PRIMARY}/challenger", params={"version": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["version"], body["champion_version"], body["changed"]) == (2, 1, True)
    # Declared on a, scored by b from its next refresh, without a request asking it.
    eventually(lambda: _challenger_version(b) == 2, what="replica b to follow the challenger")
    assert _get(b, f"/v1/rulesets/{PRIMARY}/challenger")["version"] == 2

    post_events(b, visits("old@example.it", 1, start=10))
    same = post_events(b, visits("same@example.it", 5))[-1]
    quiet = post_events(a, visits("quiet@example.it", 1))[-1]
    post_events(a, [event("opportunity.created", email="same@example.it", minutes=30)])
    post_events(b, [event("deal.won", email="old@example.it", minutes=40)])

    # Not acted on: the lead scored under the challenger looks like its control in every way
    # a user sees, and the challenger left no history row nor outbox message of its own.
    assert _visible(b, same)[:6] == _visible(a, control)[:6]
    assert _visible(b, same)[6] == _visible(a, control)[6]
    lead = _get(a, f"/v1/leads/{same}")
    assert (lead["stage"], lead["tier"], lead["score"], lead["models"]) == ("mql", "warm", 50, {})
    stored = dict(
        _rows(
            url,
            select(LeadScore.lead_id, LeadScore.summary).where(
                LeadScore.ruleset_name == CHALLENGER_KEY
            ),
        )
    )
    # The lead from before the challenge was replayed from all its events (3 views × 20).
    assert stored[old]["score"] == 60 and stored[same]["tier"] == "hot"
    assert control not in stored  # no event since the challenge began
    assert _rows(
        url,
        select(func.count()).select_from(ScoreChange).where(ScoreChange.ruleset_name != PRIMARY),
    ) == [(0,)]
    outbox = Counter(lead_id for (lead_id,) in _rows(url, select(OutboxMessage.lead_id)))
    assert outbox[same] == outbox[control] > 0

    report = _get(a, f"/v1/rulesets/{PRIMARY}/challenger/report")
    expected = _expected(url, [old, same, quiet])
    assert report["leads"] == expected["leads"] == 3
    assert report["opportunities"] == expected["opportunities"] == 2
    for side in ("champion", "challenger"):
        assert report[side]["counts"] == expected["counts"][side], side
        got = {
            row["band"]: row["opportunities"]
            for row in report[side]["conversion_by_band"]
            if row["opportunities"]
        }
        assert got == expected["band_opportunities"][side], side
        assert report[side]["auc"] == pytest.approx(expected["auc"][side]), side
    assert report["challenger"]["counts"]["stage"].get("mql", 0) >= 2
    assert report["disagreements"]["count"] == expected["disagree"] >= 2
    listed = {item["lead_id"] for item in report["disagreements"]["items"]}
    assert {old, same} <= listed

    # Promote in one call on b: v2 active on both, the challenge over.
    response = b.post(f"/v1/rulesets/{PRIMARY}/challenger/promote")
    assert response.status_code == 200, response.text
    assert (response.json()["version"], response.json()["previous_version"]) == (2, 1)
    eventually(lambda: active_version(a) == 2, what="replica a to serve v2")
    eventually(lambda: _challenger_version(a) is None, what="replica a to drop the challenger")
    assert b.get(f"/v1/rulesets/{PRIMARY}/challenger").status_code == 404
    assert _rows(
        url,
        select(func.count()).select_from(LeadScore).where(LeadScore.ruleset_name == CHALLENGER_KEY),
    ) == [(0,)]
    new = post_events(a, visits("after@example.it", 3))[-1]
    assert _get(a, f"/v1/leads/{new}")["stage"] == "mql"


def test_stopping_ends_the_challenge_on_every_replica(replicas: Replicas) -> None:
    a, b = replicas.a, replicas.b
    assert a.post(f"/v1/rulesets/{PRIMARY}/challenger", params={"version": 2}).status_code == 200
    again = a.post(f"/v1/rulesets/{PRIMARY}/challenger", params={"version": 2})
    assert again.status_code == 200 and again.json()["changed"] is False
    eventually(lambda: _challenger_version(b) == 2, what="replica b to follow the challenger")
    response = b.delete(f"/v1/rulesets/{PRIMARY}/challenger")
    assert response.status_code == 200, response.text
    eventually(lambda: _challenger_version(a) is None, what="replica a to stop scoring it")
    assert active_version(a) == 1
    assert a.get(f"/v1/rulesets/{PRIMARY}/challenger/report").status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "params", "status", "field"),
    [
        ("post", f"/v1/rulesets/{PRIMARY}/challenger", {"version": 7}, 404, "version"),
        ("post", f"/v1/rulesets/{PRIMARY}/challenger", {"version": 1}, 409, "version"),
        ("post", f"/v1/rulesets/{PRIMARY}/challenger", {"version": 0}, 422, "version"),
        ("post", f"/v1/rulesets/{PRIMARY}/challenger", {"version": 2**40}, 422, "version"),
        ("post", f"/v1/rulesets/{PRIMARY}/challenger", {"version": "x\x00"}, 422, "version"),
        ("post", f"/v1/rulesets/{PRIMARY}/challenger", {}, 422, "version"),
        ("post", "/v1/rulesets/other/challenger", {"version": 1}, 404, "name"),
        ("post", "/v1/rulesets/..%2F..%2Fetc/challenger", {"version": 2}, 404, None),
        ("post", "/v1/rulesets/A%00b/challenger", {"version": 2}, 422, "name"),
        ("post", f"/v1/rulesets/{'x' * 101}/challenger", {"version": 2}, 422, "name"),
        ("post", "/v1/rulesets/%ED%A0%80/challenger", {"version": 2}, 422, "name"),
        ("get", f"/v1/rulesets/{PRIMARY}/challenger/report", {}, 404, "name"),
        ("get", f"/v1/rulesets/{PRIMARY}/challenger/report", {"limit": -1}, 422, "limit"),
        ("post", f"/v1/rulesets/{PRIMARY}/challenger/promote", {}, 404, "name"),
        ("delete", f"/v1/rulesets/{PRIMARY}/challenger", {}, 404, "name"),
    ],
)
def test_bad_input_is_a_problem_naming_the_field(
    replicas: Replicas,
    method: str,
    path: str,
    params: dict[str, Any],
    status: int,
    field: str | None,
) -> None:
    response = replicas.a.request(method, path, params=params)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    if field is not None:
        assert field in [e["field"] for e in response.json()["errors"]], response.text
    # Nothing was declared by a refused request.
    assert replicas.a.get(f"/v1/rulesets/{PRIMARY}/challenger").status_code == 404
    assert active_version(replicas.a) == 1


def test_the_cli_starts_reports_and_promotes(replicas: Replicas) -> None:
    a = replicas.a
    env = cli_env(replicas.settings.database_url, replicas.rules)
    runner = CliRunner()
    result = runner.invoke(main, ["rules", "challenge", PRIMARY, "2"], env=env)
    assert result.exit_code == 0, result.output
    assert "v2 challenges v1" in result.output
    eventually(lambda: _challenger_version(a) == 2, what="the app to follow the CLI")
    lead = post_events(a, visits("cli@example.it", 3))[-1]

    result = runner.invoke(
        main, ["rules", "challenge", "--report", PRIMARY, "--format", "json"], env=env
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["leads"] == 1
    assert report["disagreements"]["items"][0]["lead_id"] == lead
    assert report["champion"]["counts"]["stage"] == {"lead": 1}
    assert report["challenger"]["counts"]["stage"] == {"mql": 1}

    result = runner.invoke(
        main, ["rules", "challenge", "--report", PRIMARY, "--format", "csv"], env=env
    )
    assert result.exit_code == 0, result.output
    assert "count_by_stage,mql,leads,0,1" in result.output.splitlines()
    result = runner.invoke(main, ["rules", "challenge", "--report", PRIMARY], env=env)
    assert result.exit_code == 0 and "disagree on (stage or tier): 1" in result.output

    result = runner.invoke(main, ["rules", "challenge", PRIMARY, "9"], env=env)
    assert result.exit_code == 1 and result.stderr.startswith("version: ")
    result = runner.invoke(main, ["rules", "challenge", "--report", "tri\x00al"], env=env)
    assert result.exit_code == 2 and "NAME" in result.stderr

    result = runner.invoke(main, ["rules", "challenge", "--promote", PRIMARY, "--rescore"], env=env)
    assert result.exit_code == 0, result.output
    assert "promoted" in result.output and "re-score queued" in result.output
    eventually(lambda: active_version(a) == 2, what="the app to serve the promoted version")
    result = runner.invoke(main, ["rules", "challenge", "--stop", PRIMARY], env=env)
    assert result.exit_code == 1 and result.stderr.startswith("name: ")
