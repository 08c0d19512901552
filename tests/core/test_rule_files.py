"""Broken rule files are reported as FILE:LINE: message, in plain words, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from leadscore_api.scoring import RuleFileError, load_ruleset_text
from leadscore_api.scoring.model import Ruleset

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
ruleset: demo
version: 1
components:
  fit:
    max: 50
    criteria:
      - id: big
        points: 10
        when: {field: employees, gt: 50}
  behaviour:
    max: 50
    actions:
      - id: visit
        on: page.viewed
        points: 5
tiers: {hot: 75, warm: 40, cold: 0}
stages:
  mql: {score: {gte: 50}}
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(RuleFileError) as caught:
        load_ruleset_text(text, "rules/demo.yaml")
    return [str(p) for p in caught.value.problems]


def test_the_good_file_loads() -> None:
    loaded = load_ruleset_text(GOOD, "rules/demo.yaml")
    assert (loaded.name, loaded.version, len(loaded.sha256)) == ("demo", 1, 64)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "max: 50\n    criteria",
            "max: 50\n    critera",
            "rules/demo.yaml:6: components.fit: unknown field 'critera'",
        ),
        (
            "gt: 50",
            "greater: 50",
            "rules/demo.yaml:9: components.fit.criteria[0].when: unknown operator 'greater'",
        ),
        (
            "points: 10",
            "points: ten",
            "rules/demo.yaml:8: components.fit.criteria[0].points: Input should be a valid number",
        ),
        (
            "id: visit",
            "id: big",
            "rules/demo.yaml:13: components.behaviour.actions[0].id: duplicate rule id 'big'",
        ),
        (
            "hot: 75",
            "hot: 175",
            "rules/demo.yaml:16: tiers: tier hot threshold 175.0 is outside 0–100",
        ),
        (
            "{score: {gte: 50}}",
            "{score: {gte: 150}}",
            "rules/demo.yaml:18: stages.mql: score threshold 150 is outside 0–100",
        ),
        (
            "{score: {gte: 50}}",
            "{component: engagement, gte: 30}",
            "rules/demo.yaml:18: stages.mql: refers to unknown component 'engagement'",
        ),
        (
            "max: 50\n    actions",
            "max: 150\n    actions",
            "rules/demo.yaml:11: components.behaviour.max: Input should be less than or equal to 100",
        ),
        (
            "version: 1",
            "version: 1\nversion: 2",
            "rules/demo.yaml:3: invalid YAML: duplicate key 'version' (first at line 2)",
        ),
        ("tiers: {hot: 75", "tiers: {hot: [75", "rules/demo.yaml:16: invalid YAML"),
        (
            "        on: page.viewed\n",
            "",
            "rules/demo.yaml:13: components.behaviour.actions[0]: missing required field 'on'",
        ),
    ],
)
def test_a_broken_file_names_the_line_and_the_problem(old: str, new: str, expected: str) -> None:
    assert old in GOOD
    found = problems_of(GOOD.replace(old, new, 1))
    assert any(p.startswith(expected) for p in found), found


def test_letter_bands_must_stay_within_0_100() -> None:
    found = problems_of(GOOD + "letter: {from: fit, bands: {A: 145, B: 30, C: 15, D: 0}}\n")
    assert any("rules/demo.yaml:19:" in p and "outside 0–100" in p for p in found), found


def test_the_schema_is_json_schema_with_the_rule_language() -> None:
    schema = Ruleset.model_json_schema(by_alias=True)
    assert {"ruleset", "version", "components"} <= set(schema["required"])
    assert "Operators" in json.dumps(schema)


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from leadscore_api.cli.rules import rules; rules()", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


def test_validate_and_test_pass_on_the_bundled_rules() -> None:
    validated = run_cli("validate", "rules")
    assert validated.returncode == 0, validated.stderr
    assert "pmi-letter-score v3" in validated.stdout and "bant v2" in validated.stdout
    tested = run_cli("test", "rules")
    assert tested.returncode == 0, tested.stdout
    assert tested.stdout.strip().endswith("0 failed")


def test_validate_reports_a_broken_file_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("gt: 50", "greater: 50"))
    result = run_cli("validate", str(bad))
    assert result.returncode == 1
    assert result.stderr.startswith(f"{bad}:9: ")
    assert "Traceback" not in result.stderr


def test_rule_test_failures_show_expected_and_actual(tmp_path: Path) -> None:
    text = GOOD + textwrap.dedent(
        """\
        tests:
          - name: a big firm is worth 10
            lead: {employees: 51}
            expect: {score: 11}
        """
    )
    (tmp_path / "demo.yaml").write_text(text)
    result = run_cli("test", str(tmp_path))
    assert result.returncode == 1
    assert "FAIL demo: a big firm is worth 10" in result.stdout
    assert "score: expected 11, got 10" in result.stdout


def test_eval_prints_the_documented_json(tmp_path: Path) -> None:
    lead = tmp_path / "lead.json"
    lead.write_text(
        json.dumps(
            {
                "attributes": {
                    "role": "CEO",
                    "industry": "IT",
                    "employees": 300,
                    "annual_revenue_eur": 2_000_000,
                }
            }
        )
    )
    events = tmp_path / "events.jsonl"
    events.write_text(
        "\n".join(
            json.dumps(
                {
                    "id": f"e{i}",
                    "type": "page.viewed",
                    "occurred_at": f"2026-06-1{i}T09:00:00Z",
                    "properties": {"url": "/pricing"},
                }
            )
            for i in range(1, 4)
        )
    )
    result = run_cli(
        "eval",
        "rules/pmi-letter-score.yaml",
        "--lead",
        str(lead),
        "--events",
        str(events),
        "--as-of",
        "2026-06-14T09:00:00Z",
    )
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert {"letter", "score", "tier", "stage", "components", "next_action", "explanation"} <= set(
        output
    )
    assert (output["letter"], output["stage"], output["next_action"]) == (
        "A",
        "mql",
        "priority_contact",
    )
    assert 64 <= output["score"] <= 65
    rules = {r["rule"]: r for r in output["explanation"]["components"]["behaviour"]["rules"]}
    assert rules["pricing_page_visit"]["events_counted"] == 3


def test_eval_reports_a_bad_events_file_by_line(tmp_path: Path) -> None:
    lead = tmp_path / "lead.json"
    lead.write_text("{}")
    events = tmp_path / "events.jsonl"
    events.write_text(
        '{"type": "page.viewed", "occurred_at": "2026-06-11T09:00:00Z"}\n{"type": "x", "occurred_at": "yesterday"}\n'
    )
    result = run_cli("eval", "rules/bant.yaml", "--lead", str(lead), "--events", str(events))
    assert result.returncode == 1
    assert result.stderr.startswith(f"{events}:2: event 1: occurred_at")


def test_a_problem_inside_a_combinator_names_its_full_path() -> None:
    text = GOOD.replace(
        "when: {field: employees, gt: 50}",
        "when: {all: [{field: role, eq: CEO}, {field: employees, greater: 50}]}",
    )
    found = problems_of(text)
    assert found == [
        "rules/demo.yaml:9: components.fit.criteria[0].when.all[1]: unknown operator 'greater';"
        " use one of: eq, ne, in, not_in, gt, gte, lt, lte, between, matches, exists"
    ]


def test_a_counting_window_in_working_time_is_refused_with_its_line() -> None:
    text = """ruleset: windows
version: 1
components:
  fit:
    max: 100
    criteria: [{id: big, points: 50, when: {field: employees, gt: 50}}]
stages:
  engaged:
    when: {event: page.viewed, count: {gte: 2}, within: 3bd}
"""
    with pytest.raises(RuleFileError) as caught:
        load_ruleset_text(text, "windows.yaml")
    message = str(caught.value)
    assert "windows.yaml:9" in message and "calendar time" in message


def test_a_recurring_follow_up_in_working_time_is_refused_with_its_line() -> None:
    text = """ruleset: followups
version: 1
components:
  fit:
    max: 100
    criteria: [{id: big, points: 50, when: {field: employees, gt: 50}}]
tiers: {hot: 75, warm: 40, cold: 0}
workflows:
  warm:
    action: personal_email
    follow_up_every: 5bd
"""
    with pytest.raises(RuleFileError) as caught:
        load_ruleset_text(text, "followups.yaml")
    message = str(caught.value)
    assert "followups.yaml:" in message and "calendar time" in message
