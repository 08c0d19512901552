"""``POST /v1/rulesets/backtest`` on a history whose outcomes follow a known rule."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.conftest import TEST_ADMIN_KEY, MakeApiKey, auth, make_settings

from leadscore_api.app import create_app
from leadscore_api.storage.migrate import upgrade_database

from .history import ACTIVE, BETTER, WORSE, send_history

URL = "/v1/rulesets/backtest"


@pytest.fixture
def trial(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    """The app scoring with the ``trial`` ruleset alone, with the generated history sent."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "trial.yaml").write_text(ACTIVE, encoding="utf-8")
    settings = make_settings(database_url, rules_dir=rules, primary_ruleset="trial")
    upgrade_database(settings.database_url)
    with TestClient(
        create_app(settings),
        headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"},
        raise_server_exceptions=False,
    ) as client:
        send_history(client)
        yield client


def backtest(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post(URL, json=body)
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


def sweep(summary: dict[str, Any]) -> list[tuple[int, int, int, float | None, float | None]]:
    return [
        (
            row["threshold"],
            row["sql"],
            row["opportunities"],
            row["conversion"],
            row["median_days_to_opportunity"],
        )
        for row in summary["threshold_sweep"]
    ]


def test_backtest_prefers_the_candidate_that_matches_the_outcomes(trial: TestClient) -> None:
    better = backtest(trial, content=BETTER)
    worse = backtest(trial, content=WORSE)

    assert better["leads"] == worse["leads"] == 14
    assert better["events"] == 4 * 3 + 4 * 2 + 4 + 2
    assert better["rulesets"]["active"]["version"] == 1
    assert better["rulesets"]["candidate"]["version"] == 2
    # The active ruleset scores both groups that attended a webinar 80: positives tie with four
    # of ten negatives and beat the six others: (6 + 4 / 2) / 10.
    assert better["active"]["auc"] == pytest.approx(0.8)
    # The better candidate ranks every opportunity (90) above every other lead (≤ 55).
    assert better["candidate"]["auc"] == pytest.approx(1.0)
    # The worse one ranks them (40) above the two pricing-only leads (20) alone.
    assert worse["candidate"]["auc"] == pytest.approx(0.2)
    assert better["candidate"]["auc"] > better["active"]["auc"] > worse["candidate"]["auc"]
    for report in (better, worse):
        assert report["active"]["opportunities"] == report["candidate"]["opportunities"] == 4

    # Conversion of the SQLs at the rulesets' own SQL line (80): the better candidate's SQLs are
    # exactly the opportunities; the active's are half; the worse's none.
    def at_80(summary: dict[str, Any]) -> Any:
        return next(r for r in summary["threshold_sweep"] if r["threshold"] == 80)["conversion"]

    assert at_80(better["candidate"]) == 1.0
    assert at_80(better["active"]) == 0.5
    assert at_80(worse["candidate"]) == 0.0


def test_threshold_sweep_equals_the_table_computed_by_hand(trial: TestClient) -> None:
    report = backtest(trial, content=BETTER)
    # Decision scores under BETTER: both 90 (45 after the webinar, 90 at the pricing visit),
    # webinar + newsletter 55, pricing 45, newsletter 10. Every "both" lead crosses each line
    # from 50 to 90 at its pricing visit, and its opportunity comes 2, 4, 6 or 8 days later:
    # median 5 days.
    assert sweep(report["candidate"]) == [
        (50, 8, 4, 0.5, 5.0),
        (55, 8, 4, 0.5, 5.0),
        (60, 4, 4, 1.0, 5.0),
        (65, 4, 4, 1.0, 5.0),
        (70, 4, 4, 1.0, 5.0),
        (75, 4, 4, 1.0, 5.0),
        (80, 4, 4, 1.0, 5.0),
        (85, 4, 4, 1.0, 5.0),
        (90, 4, 4, 1.0, 5.0),
        (95, 0, 0, None, None),
    ]
    # Under ACTIVE both webinar groups reach 80 at their second event, the others stay at 40.
    assert sweep(report["active"]) == [
        *[(t, 8, 4, 0.5, 5.0) for t in range(50, 85, 5)],
        (85, 0, 0, None, None),
        (90, 0, 0, None, None),
        (95, 0, 0, None, None),
    ]


def test_report_counts_bands_stages_and_stage_changes(trial: TestClient) -> None:
    report = backtest(trial, content=BETTER, stage_changes_limit=2)
    candidate, active = report["candidate"], report["active"]
    assert candidate["counts"]["stage"] == {"lead": 6, "mql": 4, "sql": 4}
    assert active["counts"]["stage"] == {"lead": 6, "sql": 8}
    assert candidate["counts"]["tier"] == {"cold": 4, "hot": 4, "warm": 6}
    bands = {
        row["band"]: (row["leads"], row["opportunities"]) for row in candidate["conversion_by_band"]
    }
    assert bands["90-100"] == (4, 4)
    assert bands["50-59"] == (4, 0)
    assert bands["40-49"] == (2, 0)
    assert bands["10-19"] == (4, 0)
    by_stage = {row["stage"]: row["conversion"] for row in candidate["conversion_by_stage"]}
    assert by_stage == {"lead": 0.0, "mql": 0.0, "sql": 1.0}
    # Webinar + newsletter leads were SQL under the active ruleset and are MQL under BETTER.
    changes = report["stage_changes"]
    assert changes["count"] == 4
    assert changes["by_move"] == [{"from": "sql", "to": "mql", "leads": 4}]
    assert len(changes["items"]) == 2
    assert changes["items"][0]["active"] == {"stage": "sql", "score": 80}
    assert changes["items"][0]["candidate"] == {"stage": "mql", "score": 55}
    # Days from the first event to SQL under BETTER: one day (webinar, then pricing).
    assert candidate["median_days"]["to_sql"] == 1.0
    assert candidate["median_days"]["sql_to_opportunity"] == 5.0


def test_stored_ruleset_version_is_a_candidate(trial: TestClient) -> None:
    report = backtest(trial, ruleset={"name": "trial", "version": 1})
    assert report["stage_changes"]["count"] == 0
    assert report["candidate"] == report["active"]
    missing = trial.post(URL, json={"ruleset": {"name": "trial", "version": 9}})
    assert missing.status_code == 404
    assert "trial" in missing.json()["detail"]


def test_period_restricts_the_leads(trial: TestClient) -> None:
    everyone = backtest(trial, content=BETTER)
    # Leads start on days 0–3 after START; from day 30 on only the latest opportunities remain.
    start = everyone["period"]["to"]
    assert start is not None
    none = trial.post(
        URL, json={"content": BETTER, "from": "2000-01-01T00:00:00Z", "to": "2000-02-01T00:00:00Z"}
    )
    assert none.status_code == 200, none.text
    assert none.json()["leads"] == 0
    assert none.json()["candidate"]["auc"] is None


def test_invalid_candidate_is_422_naming_file_and_line(trial: TestClient) -> None:
    broken = BETTER.replace("points: 45", "points: lots", 1)
    line = next(i for i, text in enumerate(broken.splitlines(), start=1) if "lots" in text)
    response = trial.post(URL, json={"content": broken, "filename": "mine.yaml"})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert f"mine.yaml:{line}:" in body["detail"]
    assert body["errors"][0]["field"] == "content"
    assert body["errors"][0]["message"].startswith(f"mine.yaml:{line}:")
    for bad in ({}, {"content": BETTER, "ruleset": {"name": "trial", "version": 1}}):
        response = trial.post(URL, json=bad)
        assert response.status_code == 422, response.text
    for hostile in (
        {"content": "ruleset: x\x00"},
        {"content": "ruleset: x\ud800"},
        {"ruleset": {"name": "trial\x00", "version": 1}},
        {"ruleset": {"name": "trial", "version": 10**30}},
        {"content": BETTER, "filename": "a\x00b"},
    ):
        response = trial.post(
            URL, content=json.dumps(hostile), headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 422, (hostile, response.text)


@pytest.mark.parametrize(
    ("period", "field"),
    [
        ({"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from"),
        ({"to": "yesterday"}, "to"),
        ({"from": "2026-01-01T00:00:00"}, "from"),
        ({"to": "+99999-01-01T00:00:00Z"}, "to"),
    ],
)
def test_bad_period_is_400(trial: TestClient, period: dict[str, str], field: str) -> None:
    response = trial.post(URL, json={"content": BETTER, **period})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["type"].endswith("bad-period")
    assert body["errors"][0]["field"] == field


def test_backtest_needs_rules_admin(client: TestClient, make_api_key: MakeApiKey) -> None:
    reader = make_api_key("leads:read")
    response = client.post(URL, json={"content": BETTER}, headers=auth(reader))
    assert response.status_code == 403
