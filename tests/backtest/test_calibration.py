"""``leadscore rules calibrate``: points fitted to outcomes, written as a reviewable candidate."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from tests.conftest import TEST_ADMIN_KEY, make_settings

from leadscore_api.app import create_app
from leadscore_api.cli import main
from leadscore_api.scoring import RuleFileError, load_ruleset_file, load_ruleset_text
from leadscore_api.scoring.ruleset_edit import with_points
from leadscore_api.storage.migrate import upgrade_database

from .history import ACTIVE, send_history

HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None
needs_sklearn = pytest.mark.skipif(
    not HAS_SKLEARN,
    reason="scikit-learn is not installed: pip install -e '.[dev,calibration]' to run this test",
)


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "trial.yaml").write_text(ACTIVE, encoding="utf-8")
    settings = make_settings(database_url, rules_dir=rules, primary_ruleset="trial")
    upgrade_database(settings.database_url)
    with TestClient(
        create_app(settings), headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"}
    ) as client:
        send_history(client)
    yield {
        "LEADSCORE_DATABASE_URL": database_url,
        "LEADSCORE_RULES_DIR": str(rules),
        "LEADSCORE_PRIMARY_RULESET": "trial",
    }


@needs_sklearn
def test_calibrated_file_weighs_what_predicts_outcomes(
    env: dict[str, str], tmp_path: Path, database_url: str
) -> None:
    out = tmp_path / "calibrated.yaml"
    result = CliRunner().invoke(main, ["rules", "calibrate", "--out", str(out)], env=env)
    assert result.exit_code == 0, result.output
    calibrated = load_ruleset_file(out)
    assert (calibrated.name, calibrated.version) == ("trial", 2)
    points = {a.id: a.points for a in calibrated.ruleset.components["behaviour"].actions}
    # Opportunities come from webinar AND pricing; the newsletter tells against one.
    assert points["webinar"] > points["newsletter"]
    assert points["pricing"] > points["newsletter"]
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Calibrated by `leadscore rules calibrate`")
    assert "coefficient" in text
    assert "Conversion per score band" in text
    assert "AUC of the score for an opportunity: now 0.8, this file 1.0." in text
    # The rest of the file is the active one.
    body = [line for line in text.splitlines() if not line.startswith("#")]
    active = ACTIVE.splitlines()
    assert len(body) == len(active)
    assert [a for a, b in zip(body, active, strict=True) if a != b] == [
        "version: 2",
        *(f"        points: {int(points[rule])}" for rule in ("webinar", "pricing", "newsletter")),
    ]


def test_missing_extra_is_named(env: dict[str, str], tmp_path: Path) -> None:
    saved = {name: sys.modules.get(name) for name in ("sklearn", "sklearn.linear_model")}
    sys.modules["sklearn"] = None  # type: ignore[assignment]
    sys.modules["sklearn.linear_model"] = None  # type: ignore[assignment]
    try:
        result = CliRunner().invoke(
            main, ["rules", "calibrate", "--out", str(tmp_path / "x.yaml")], env=env
        )
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    assert result.exit_code == 1
    assert "pip install 'leadscore[calibration]'" in result.output
    assert not (tmp_path / "x.yaml").exists()


def test_rewrite_keeps_comments_and_handles_flow_items() -> None:
    text = (
        "# my rules\nruleset: r\nversion: 7\ncomponents:\n  b:\n    max: 100\n    actions:\n"
        "      - {id: a, on: x.y, points: 30}  # keep\n"
        "      - id: c\n        # why\n        on: z.w\n        points: 5  # note\n"
    )
    rewritten = with_points(text, {"a": 12.0, "c": -3.0}, 8, header="fit\nline two")
    assert rewritten.splitlines()[:3] == ["# fit", "# line two", "# my rules"]
    assert "      - {id: a, on: x.y, points: 12}  # keep" in rewritten
    assert "        points: -3  # note" in rewritten
    loaded = load_ruleset_text(rewritten)
    assert loaded.version == 8
    with pytest.raises(RuleFileError, match="no `points:` line found for rule zz"):
        with_points(text, {"zz": 1.0}, 8)
