"""``leadscore rules``: validate, test, export the schema of, and evaluate ruleset files.

Problems are printed as ``FILE:LINE: message`` and reflected in the exit status, so the
commands fit in an editor's problem matcher and in CI.
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from leadscore_api.config import BUNDLED_RULES_DIR
from leadscore_api.scoring.engine import ScoringEvent
from leadscore_api.scoring.loader import (
    LoadedRuleset,
    Problem,
    RuleFileError,
    load_ruleset_file,
    load_ruleset_paths,
    load_test_files,
    ruleset_files,
)
from leadscore_api.scoring.model import Ruleset
from leadscore_api.scoring.ruletests import parse_time, run_test


def _default_paths(paths: tuple[str, ...]) -> list[str]:
    if paths:
        return list(paths)
    return ["rules"] if Path("rules").is_dir() else [str(BUNDLED_RULES_DIR)]


def _fail(problems: list[Problem]) -> None:
    for problem in problems:
        click.echo(str(problem), err=True)
    sys.exit(1)


@click.group()
def rules() -> None:
    """Validate, test and try out ruleset files."""


@rules.command()
@click.argument("paths", nargs=-1, type=click.Path())
def validate(paths: tuple[str, ...]) -> None:
    """Check ruleset files (or folders of them); exit 1 listing FILE:LINE: problem."""
    targets = _default_paths(paths)
    try:
        loaded = load_ruleset_paths(targets)
    except RuleFileError as exc:
        _fail(exc.problems)
    for item in loaded.values():
        click.echo(f"{item.path}: ok ({item.name} v{item.version}, sha256 {item.sha256[:12]})")


@rules.command("test")
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("-v", "--verbose", is_flag=True, help="Print every test, not only failures.")
def test_command(paths: tuple[str, ...], verbose: bool) -> None:
    """Run the rule tests in ruleset files and in <folder>/tests/*.yaml."""
    targets = _default_paths(paths)
    try:
        loaded = load_ruleset_paths(targets)
        folders = {Path(t) for t in targets if Path(t).is_dir()} | {
            f.parent for f in ruleset_files(targets) if not Path(f).is_dir()
        }
        test_files = [tf for folder in sorted(folders) for tf in load_test_files(folder)]
    except RuleFileError as exc:
        _fail(exc.problems)
    jobs: list[tuple[LoadedRuleset, Any, str]] = []
    for item in loaded.values():
        jobs.extend((item, t, item.path) for t in item.ruleset.tests)
    problems: list[Problem] = []
    for tf in test_files:
        if tf.ruleset not in loaded:
            problems.append(Problem(tf.path, 1, f"tests for unknown ruleset {tf.ruleset!r}"))
            continue
        jobs.extend((loaded[tf.ruleset], t, tf.path) for t in tf.tests)
    if problems:
        _fail(problems)
    failed = 0
    for item, test, where in jobs:
        outcome = run_test(item, test)
        if outcome.passed:
            if verbose:
                click.echo(f"PASS {item.name}: {test.name}")
            continue
        failed += 1
        click.echo(f"FAIL {item.name}: {test.name} ({where})")
        if outcome.error:
            click.echo(f"  error: {outcome.error}")
        for mismatch in outcome.mismatches:
            click.echo(f"  {mismatch}")
    click.echo(f"{len(jobs) - failed} passed, {failed} failed")
    if failed or not jobs:
        sys.exit(1)


@rules.command()
def schema() -> None:
    """Print the JSON Schema of a ruleset file (for editor autocompletion)."""
    document = Ruleset.model_json_schema(by_alias=True)
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["$id"] = "https://leadscore.dev/schemas/ruleset.json"
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


def _read_json_or_lines(path: str) -> tuple[list[tuple[int, Any]], list[Problem]]:
    text = Path(path).read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            return [], [Problem(path, exc.lineno, f"invalid JSON: {exc.msg}")]
        return [(1, item) for item in data], []
    items: list[tuple[int, Any]] = []
    problems: list[Problem] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            problems.append(Problem(path, number, f"invalid JSON: {exc.msg}"))
    return items, problems


def _scoring_event(path: str, line: int, index: int, raw: Any) -> ScoringEvent | Problem:
    if not isinstance(raw, dict):
        return Problem(path, line, f"event {index}: must be a JSON object")
    if not isinstance(raw.get("type"), str):
        return Problem(path, line, f"event {index}: 'type' is missing or not a string")
    try:
        occurred = parse_time(str(raw["occurred_at"]))
    except KeyError:
        return Problem(path, line, f"event {index}: 'occurred_at' is missing")
    except ValueError as exc:
        return Problem(path, line, f"event {index}: occurred_at: {exc}")
    for key in ("properties", "attributes"):
        if not isinstance(raw.get(key, {}), dict):
            return Problem(path, line, f"event {index}: {key!r} must be an object")
    return ScoringEvent(
        str(raw.get("id") or uuid.uuid4()),
        raw["type"],
        occurred,
        raw.get("properties") or {},
        raw.get("attributes") or {},
    )


@rules.command("eval")
@click.argument("rules_file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--lead",
    "lead_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="JSON: the lead's attributes, or an object with 'attributes'.",
)
@click.option(
    "--events",
    "events_file",
    type=click.Path(exists=True, dir_okay=False),
    help="JSON array or JSON lines of canonical events.",
)
@click.option("--as-of", "as_of", help="RFC 3339 time to score at (default: now).")
def eval_command(
    rules_file: str, lead_file: str, events_file: str | None, as_of: str | None
) -> None:
    """Score one lead offline and print the result as JSON."""
    try:
        loaded = load_ruleset_file(rules_file)
    except RuleFileError as exc:
        _fail(exc.problems)
    try:
        lead = json.loads(Path(lead_file).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        _fail([Problem(lead_file, exc.lineno, f"invalid JSON: {exc.msg}")])
    if not isinstance(lead, dict):
        _fail([Problem(lead_file, 1, "the lead must be a JSON object")])
    attributes = lead.get("attributes", lead) if isinstance(lead.get("attributes"), dict) else lead
    try:
        moment = parse_time(as_of) if as_of else datetime.now(UTC)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--as-of") from None
    events: list[ScoringEvent] = []
    problems: list[Problem] = []
    if events_file:
        items, problems = _read_json_or_lines(events_file)
        for index, (line, raw) in enumerate(items):
            parsed = _scoring_event(events_file, line, index, raw)
            if isinstance(parsed, Problem):
                problems.append(parsed)
            else:
                events.append(parsed)
    if problems:
        _fail(problems)
    # The lead file's attributes hold from just before the first event.
    start = min([e.occurred_at for e in events] + [moment]) - timedelta(seconds=1)
    seed = ScoringEvent("lead-attributes", "lead.attributes_updated", start, {}, attributes)
    _, result = loaded.scorer.replay([seed, *events], moment)
    click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))


def _register_lifecycle_commands() -> None:
    # Imported here: the backtest pulls in the service and storage layers, which `validate`,
    # `test` and `eval` do not need.
    from leadscore_api.cli.backtest import backtest, calibrate

    rules.add_command(backtest)
    rules.add_command(calibrate)


_register_lifecycle_commands()
