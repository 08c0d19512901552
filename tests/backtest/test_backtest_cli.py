"""``leadscore rules backtest``: the API's report as a table, CSV and JSON, from the terminal."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from tests.conftest import TEST_ADMIN_KEY, make_settings

from leadscore_api.app import create_app
from leadscore_api.cli import main
from leadscore_api.storage.migrate import upgrade_database

from .history import ACTIVE, BETTER, send_history


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A database holding the generated history, and the environment the CLI reads."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "trial.yaml").write_text(ACTIVE, encoding="utf-8")
    settings = make_settings(database_url, rules_dir=rules, primary_ruleset="trial")
    upgrade_database(settings.database_url)
    with TestClient(
        create_app(settings), headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"}
    ) as client:
        send_history(client)
        api = client.post("/v1/rulesets/backtest", json={"content": BETTER})
        assert api.status_code == 200
        (tmp_path / "api.json").write_text(api.text, encoding="utf-8")
    yield {
        "LEADSCORE_DATABASE_URL": database_url,
        "LEADSCORE_RULES_DIR": str(rules),
        "LEADSCORE_PRIMARY_RULESET": "trial",
    }


def run(env: dict[str, str], *args: str) -> Any:
    result = CliRunner().invoke(main, ["rules", "backtest", *args], env=env)
    return result


def without_timing(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k not in ("elapsed_seconds", "period")}


def test_json_matches_the_api_serial_and_parallel(env: dict[str, str], tmp_path: Path) -> None:
    candidate = tmp_path / "better.yaml"
    candidate.write_text(BETTER, encoding="utf-8")
    api = json.loads((tmp_path / "api.json").read_text(encoding="utf-8"))
    for workers in ("1", "2"):
        result = run(env, str(candidate), "--format", "json", "--workers", workers)
        assert result.exit_code == 0, result.output
        assert without_timing(json.loads(result.output)) == without_timing(api)


def test_table_shows_the_sweep_side_by_side(env: dict[str, str], tmp_path: Path) -> None:
    candidate = tmp_path / "better.yaml"
    candidate.write_text(BETTER, encoding="utf-8")
    result = run(env, str(candidate), "--workers", "1")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "active: trial v1   candidate: trial v2" in lines
    # SQL at 60: active 8 SQLs, 50 % of them opportunities, 5 days; candidate 4, 100 %, 5 days.
    row = next(line for line in lines if line.startswith("SQL at 60"))
    assert row.split()[3:] == ["8", "50.0", "%", "5.00", "4", "100.0", "%", "5.00"]
    auc = next(line for line in lines if line.startswith("AUC"))
    assert auc.split()[-2:] == ["0.800", "1.000"]
    assert "Leads whose stage would change: 4 (sql → mql: 4)" in lines


def test_csv_has_one_figure_per_row(env: dict[str, str], tmp_path: Path) -> None:
    candidate = tmp_path / "better.yaml"
    candidate.write_text(BETTER, encoding="utf-8")
    result = run(env, str(candidate), "--format", "csv", "--workers", "1")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    figures = {(r["section"], r["item"], r["metric"]): (r["active"], r["candidate"]) for r in rows}
    assert figures[("overview", "", "auc")] == ("0.8", "1.0")
    assert figures[("threshold_sweep", "85", "sql")] == ("0", "4")
    assert figures[("threshold_sweep", "95", "conversion")] == ("", "")
    assert figures[("count_by_stage", "mql", "leads")] == ("0", "4")


def test_stored_version_and_bad_input(env: dict[str, str], tmp_path: Path) -> None:
    same = run(env, "trial@1", "--format", "json", "--workers", "1")
    assert same.exit_code == 0, same.output
    assert json.loads(same.output)["stage_changes"]["count"] == 0
    missing = run(env, "trial@7")
    assert missing.exit_code == 1
    assert "no stored ruleset 'trial' version 7" in missing.output
    broken = tmp_path / "broken.yaml"
    broken.write_text(BETTER.replace("points: 45", "points: lots", 1), encoding="utf-8")
    line = next(i for i, t in enumerate(broken.read_text().splitlines(), 1) if "lots" in t)
    bad = run(env, str(broken))
    assert bad.exit_code == 1
    assert f"{broken}:{line}:" in bad.output
    period = run(env, "trial@1", "--from", "2026-02-01T00:00:00Z", "--to", "2026-01-01T00:00:00Z")
    assert period.exit_code == 2
    assert "from must be before to" in period.output


def test_the_active_side_is_the_version_the_database_serves_not_the_folders_file(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A newer file in the folder, stored with reload --no-activate, is not "the active one"."""
    rules = Path(env["LEADSCORE_RULES_DIR"])
    (rules / "trial.yaml").write_text(BETTER, encoding="utf-8")  # v2 in the folder now
    stored = CliRunner().invoke(main, ["rules", "reload", "--no-activate"], env=env)
    assert stored.exit_code == 0, stored.output
    result = run(env, "trial@2", "--format", "json", "--workers", "1")
    assert result.exit_code == 0, result.output
    rulesets = json.loads(result.output)["rulesets"]
    assert (rulesets["active"]["version"], rulesets["candidate"]["version"]) == (1, 2)
