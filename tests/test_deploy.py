"""The deployment files agree with the code: every command they run exists with the options they
pass, and every setting they set is one the service reads.

``deploy/smoke.py`` (run by CI) runs the Dockerfile's install and start steps for real; these
checks catch the cheaper mistakes (a renamed option, a misspelt variable) in the files a new
operator copies.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from leadscore_api.cli import main
from leadscore_api.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "deploy" / "compose.yaml"


def _assert_command_parses(argv: list[str]) -> None:
    """``leadscore ...`` as the CLI would parse it (without running it)."""
    assert argv[0] == "leadscore", argv
    command = main.get_command(click.Context(main), argv[1])
    assert command is not None, f"no command {argv[1]!r}"
    command.make_context(argv[1], list(argv[2:]), resilient_parsing=False)


def _setting_names() -> set[str]:
    return {f"LEADSCORE_{name.upper()}" for name in Settings.model_fields}


def _known_setting(variable: str) -> bool:
    return variable in _setting_names()


def test_the_dockerfile_runs_commands_that_exist() -> None:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    cmd = [json.loads(line.strip()[3:]) for line in text.splitlines() if line.startswith("CMD")]
    assert len(cmd) == 1
    _assert_command_parses(cmd[0])
    assert "--no-migrate" in cmd[0], "replicas must not migrate: `leadscore migrate` does"
    assert re.search(r"^USER leadscore", text, re.MULTILINE), "the image runs as a non-root user"
    assert "HEALTHCHECK" in text


def test_the_compose_services_run_commands_that_exist() -> None:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"postgres", "migrate", "api", "worker"} <= set(services)
    for name in ("migrate", "api", "worker"):
        _assert_command_parses(services[name]["command"])
    assert services["migrate"]["command"][:2] == ["leadscore", "migrate"]
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("path", ["deploy/compose.yaml", "deploy/env.example"])
def test_every_variable_the_deployment_sets_is_a_setting(path: str) -> None:
    variables = set(re.findall(r"\bLEADSCORE_[A-Z0-9_]+", (ROOT / path).read_text()))
    assert variables, path
    unknown = sorted(v for v in variables if not _known_setting(v))
    assert not unknown, f"{path} sets variables the service does not read: {unknown}"


def test_the_operations_guide_documents_every_setting() -> None:
    guide = (ROOT / "docs" / "operations.md").read_text()
    missing = sorted(
        name
        for name in _setting_names()
        if f"`{name.removeprefix('LEADSCORE_')}`" not in guide
        # One row covers the per-platform secrets: WEBHOOK_<SOURCE>_SECRET.
        and re.fullmatch(r"LEADSCORE_WEBHOOK_[A-Z]+_SECRET", name) is None
    )
    assert not missing, f"docs/operations.md does not document: {missing}"
