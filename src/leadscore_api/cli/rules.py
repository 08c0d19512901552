"""``leadscore rules``: validate, test, export the schema of, and evaluate ruleset files; list,
show, diff, activate, roll back and reload the stored versions, and re-score every lead.

Problems are printed as ``FILE:LINE: message`` and reflected in the exit status, so the
commands fit in an editor's problem matcher and in CI.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from leadscore_api.config import BUNDLED_RULES_DIR, Settings
from leadscore_api.errors import LeadscoreError, NotFound
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

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from leadscore_api.service.jobs import JobView


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
    """Validate, test and try out ruleset files; switch the versions the service serves."""


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


# -- the stored versions: list, show, diff, activate, roll back, reload, re-score -------------


@contextmanager
def _database(*, migrate: bool = False) -> Iterator[tuple[Settings, sessionmaker[Session]]]:
    """The configured database (migrated first for commands that write), disposed after."""
    from leadscore_api.cli.serve import checked_settings
    from leadscore_api.storage.db import make_engine, make_session_factory
    from leadscore_api.storage.migrate import upgrade_database

    settings = checked_settings()
    if migrate:
        upgrade_database(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        yield settings, make_session_factory(engine)
    finally:
        engine.dispose()


def _refuse(exc: LeadscoreError) -> NoReturn:
    """A service refusal on the terminal: ``FILE:LINE: message`` lines when it names files."""
    if exc.errors:
        for error in exc.errors:
            click.echo(f"{error['field']}: {error['message']}", err=True)
    else:
        click.echo(f"error: {exc.detail}", err=True)
    sys.exit(1)


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment is not None else "-"


@rules.command("list")
@click.argument("name", required=False)
def list_command(name: str | None) -> None:
    """The active rulesets; with NAME, every stored version of it (* marks the active one)."""
    from leadscore_api.service import rulesets as service
    from leadscore_api.storage.repositories import rulesets as rulesets_repo

    with _database() as (_settings, factory), factory() as session:
        if name is None:
            rows = rulesets_repo.active_records(session)
            if not rows:
                click.echo("no active rulesets stored yet (start the service or reload)", err=True)
            for activation, record in rows:
                click.echo(
                    f"{record.name}\tv{record.version}\t{record.sha256[:12]}"
                    f"\t{activation.action} {_when(activation.activated_at)}"
                )
            return
        try:
            versions = service.list_versions(session, name)
        except LeadscoreError as exc:
            _refuse(exc)
        for stored in versions:
            mark = "*" if stored.active else " "
            click.echo(
                f"{mark} {stored.record.name}\tv{stored.record.version}"
                f"\t{stored.record.sha256[:12]}\tstored {_when(stored.record.activated_at)}"
                f"\tactivated {_when(stored.activated_at)}"
            )


@rules.command("show")
@click.argument("name")
@click.argument("version", required=False, type=click.IntRange(min=1))
def show_command(name: str, version: int | None) -> None:
    """Print the YAML of the active version of NAME (or of a stored VERSION)."""
    from leadscore_api.service import rulesets as service

    with _database() as (_settings, factory), factory() as session:
        try:
            versions = service.list_versions(session, name)
            if version is None:
                active = [s for s in versions if s.active]
                if not active:
                    _refuse(NotFound(f"no active version of ruleset {name!r}"))
                stored = active[0]
            else:
                stored = service.get_version(session, name, version)
        except LeadscoreError as exc:
            _refuse(exc)
        click.echo(stored.record.content, nl=not stored.record.content.endswith("\n"))


@rules.command("diff")
@click.argument("name")
@click.argument("old", type=click.IntRange(min=1))
@click.argument("new", type=click.IntRange(min=1))
def diff_command(name: str, old: int, new: int) -> None:
    """A unified diff of two stored versions of NAME."""
    from leadscore_api.service import rulesets as service

    with _database() as (_settings, factory), factory() as session:
        try:
            text = service.diff_versions(session, name, old, new)
        except LeadscoreError as exc:
            _refuse(exc)
    click.echo(text, nl=False)


_rescore_option = click.option(
    "--rescore", is_flag=True, help="Queue a re-score of every lead under the new version."
)
_webhooks_option = click.option(
    "--emit-webhooks", is_flag=True, help="Send the re-score's transitions to subscriptions."
)


def _job_line(job: JobView | None) -> None:
    if job is not None:
        click.echo(
            f"re-score queued: job {job.id} ({job.total} leads); follow it with"
            f" `leadscore rules rescore` or GET /v1/jobs/{job.id}"
        )


@rules.command("activate")
@click.argument("name")
@click.argument("version", type=click.IntRange(min=1))
@_rescore_option
@_webhooks_option
def activate_command(name: str, version: int, rescore: bool, emit_webhooks: bool) -> None:
    """Serve stored VERSION of NAME on every replica (within the refresh interval)."""
    from leadscore_api.service import lifecycle

    with _database(migrate=True) as (_settings, factory):
        try:
            switch, job = lifecycle.activate(
                factory, None, name, version, lifecycle.Rescore(rescore, emit_webhooks)
            )
        except LeadscoreError as exc:
            _refuse(exc)
    if switch.changed:
        click.echo(f"{name}: v{switch.previous_version} -> v{switch.version} active")
    else:
        click.echo(f"{name}: v{switch.version} was already active")
    _job_line(job)


@rules.command("rollback")
@click.argument("name")
@_rescore_option
@_webhooks_option
def rollback_command(name: str, rescore: bool, emit_webhooks: bool) -> None:
    """Serve again the version of NAME that was active before the current one."""
    from leadscore_api.service import lifecycle

    with _database(migrate=True) as (_settings, factory):
        try:
            switch, job = lifecycle.rollback(
                factory, None, name, lifecycle.Rescore(rescore, emit_webhooks)
            )
        except LeadscoreError as exc:
            _refuse(exc)
    click.echo(f"{name}: rolled back v{switch.previous_version} -> v{switch.version}")
    _job_line(job)


@rules.command("reload")
@_rescore_option
@_webhooks_option
@click.option(
    "--no-activate",
    is_flag=True,
    help="Store new versions without serving them (to backtest them or run a challenger).",
)
def reload_command(rescore: bool, emit_webhooks: bool, no_activate: bool) -> None:
    """Validate and store the rules folder; activate the versions seen for the first time.

    Invalid files are listed as FILE:LINE: problem and nothing changes; a changed file that
    kept its version number is refused. Running services follow within seconds.
    """
    from leadscore_api.service import lifecycle

    with _database(migrate=True) as (settings, factory):
        try:
            report, job = lifecycle.reload(
                factory,
                None,
                settings,
                lifecycle.Rescore(rescore, emit_webhooks),
                activate=not no_activate,
            )
        except LeadscoreError as exc:
            _refuse(exc)
    for item in report.files:
        click.echo(f"{item.path}: {item.status} ({item.name} v{item.version}, {item.sha256[:12]})")
    _job_line(job)


class _Progress:
    """Progress on stderr: one redrawn bar on a terminal, a line per chunk otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()

    def __call__(self, job: JobView) -> None:
        total = job.total or 0
        share = min(1.0, job.done / total) if total else 1.0
        if self.tty:
            filled = int(share * 30)
            bar = "#" * filled + "." * (30 - filled)
            click.echo(
                f"\rrescore [{bar}] {job.done}/{total} leads {share:.0%}", err=True, nl=False
            )
        else:
            click.echo(f"rescore {job.id}: {job.done}/{total} leads ({share:.0%})", err=True)

    def close(self) -> None:
        if self.tty:
            click.echo("", err=True)


@rules.command("rescore")
@_webhooks_option
@click.option("--job", "job_id", help="The job to run (default: the open one, else a new one).")
@click.option(
    "--chunk-size",
    type=click.IntRange(1, 10_000),
    default=200,
    show_default=True,
    help="Leads per transaction.",
)
@click.option(
    "--pause",
    type=click.FloatRange(0, 60),
    default=0.0,
    show_default=True,
    help="Seconds to wait between chunks, leaving the database to live traffic.",
)
def rescore_command(emit_webhooks: bool, job_id: str | None, chunk_size: int, pause: float) -> None:
    """Re-score every lead under the active rulesets, in the foreground, with progress.

    Continues the unfinished re-score (an activation's, or one killed midway) from its last
    finished chunk, or starts one. Webhooks go out only with --emit-webhooks (for a new job).
    """
    from leadscore_api.service import jobs
    from leadscore_api.service.rulesets import RegistryError, RulesetRegistry
    from leadscore_api.storage.unit_of_work import in_transaction

    with _database(migrate=True) as (settings, factory):
        registry = RulesetRegistry({}, settings.primary_ruleset)
        try:
            with factory() as session:
                registry.refresh(session)
        except (RegistryError, RuleFileError) as exc:
            click.echo(
                f"error: {exc}; start the service or run `leadscore rules reload` first", err=True
            )
            sys.exit(1)
        registry.bind(factory, settings.ruleset_refresh_seconds)
        try:
            with factory() as session:
                job = jobs.get_job(session, job_id) if job_id else jobs.open_rescore(session)
            if job is None:
                job = in_transaction(
                    factory,
                    lambda s: jobs.create_rescore(s, emit_webhooks=emit_webhooks, reason="cli"),
                )
        except LeadscoreError as exc:
            _refuse(exc)
        owner = jobs.worker_name()
        claimed = jobs.claim(factory, owner, job.id)
        if claimed is None:
            click.echo(f"job {job.id} is {job.status}; nothing to do", err=True)
            sys.exit(0 if job.status == "done" else 1)
        progress = _Progress()
        progress(claimed)
        final = jobs.run_job(
            factory,
            registry,
            claimed,
            owner,
            chunk_size=chunk_size,
            pause=pause,
            on_progress=progress,
        )
        progress.close()
    click.echo(f"job {final.id}: {final.status}, {final.done} leads")
    if final.status != "done":
        if final.error:
            click.echo(f"error: {final.error}", err=True)
        sys.exit(1)


def _register_lifecycle_commands() -> None:
    # Imported here: the backtest pulls in the service and storage layers, which `validate`,
    # `test` and `eval` do not need.
    from leadscore_api.cli.backtest import backtest, calibrate
    from leadscore_api.cli.challenger import challenge

    rules.add_command(backtest)
    rules.add_command(calibrate)
    rules.add_command(challenge)


_register_lifecycle_commands()
