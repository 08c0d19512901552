"""``leadscore rules backtest``: a candidate ruleset against the active one on stored history.

The same report as ``POST /v1/rulesets/backtest``, printed as aligned tables for a terminal, as
CSV for a spreadsheet, or as the API's JSON. It reads the database of ``LEADSCORE_DATABASE_URL``
and writes nothing; the replay runs in ``--workers`` processes, each on a slice of the leads.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import click
from sqlalchemy.orm import Session

from leadscore_api.cli.serve import checked_rulesets, checked_settings
from leadscore_api.errors import LeadscoreError
from leadscore_api.scoring import LoadedRuleset, RuleFileError, load_ruleset_file
from leadscore_api.service import backtest as service
from leadscore_api.service.rulesets import RegistryError, RulesetRegistry
from leadscore_api.storage.db import make_engine, make_session_factory

#: ``NAME@VERSION``: a ruleset version stored by the service.
_STORED = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)@(?P<version>\d+)$")


def _fail(message: str) -> None:
    click.echo(message, err=True)
    sys.exit(1)


def load_candidate(candidate: str, session_factory: Any) -> LoadedRuleset:
    """A file path, or ``NAME@VERSION`` of a stored ruleset; exits 1 with FILE:LINE problems."""
    match = _STORED.match(candidate)
    if match is not None and not Path(candidate).exists():
        with session_factory() as session:
            return service.candidate_from_store(session, match["name"], int(match["version"]))
    try:
        return load_ruleset_file(candidate)
    except RuleFileError as exc:
        _fail(str(exc))
    raise AssertionError("unreachable")


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """An aligned plain-text table: first column left, the others right."""
    body = [list(headers), *[list(row) for row in rows]]
    widths = [max(len(row[i]) for row in body) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(body[0]), rule, *(line(row) for row in body[1:])])


def _pairs(report: dict[str, Any], key: str) -> tuple[Any, Any]:
    return report["active"][key], report["candidate"][key]


def render_table(report: dict[str, Any]) -> str:
    a, c = report["active"], report["candidate"]
    ra, rc = report["rulesets"]["active"], report["rulesets"]["candidate"]
    period = report["period"]
    out: list[str] = [
        f"Backtest {period['from'] or 'all history'} → {period['to']}: "
        f"{report['leads']} leads, {report['events']} events",
        f"active: {ra['name']} v{ra['version']}   candidate: {rc['name']} v{rc['version']}",
        "",
    ]
    overview = [
        ("leads", _num(a["leads"]), _num(c["leads"])),
        ("opportunities", _num(a["opportunities"]), _num(c["opportunities"])),
        ("won", _num(a["won"]), _num(c["won"])),
        ("conversion lead → opportunity", _pct(a["conversion"]), _pct(c["conversion"])),
        ("AUC (score predicts opportunity)", _num(a["auc"], 3), _num(c["auc"], 3)),
        (
            f"median days to SQL ({a['sql_stage']} / {c['sql_stage']})",
            _num(a["median_days"]["to_sql"]),
            _num(c["median_days"]["to_sql"]),
        ),
        (
            "median days to opportunity",
            _num(a["median_days"]["to_opportunity"]),
            _num(c["median_days"]["to_opportunity"]),
        ),
        (
            "median days SQL → opportunity",
            _num(a["median_days"]["sql_to_opportunity"]),
            _num(c["median_days"]["sql_to_opportunity"]),
        ),
    ]
    out += [table(["", "active", "candidate"], overview), ""]
    counts = []
    for dimension in ("letter", "tier", "stage"):
        keys = sorted(set(a["counts"][dimension]) | set(c["counts"][dimension]))
        counts += [
            (
                f"{dimension} {key}",
                _num(a["counts"][dimension].get(key, 0)),
                _num(c["counts"][dimension].get(key, 0)),
            )
            for key in keys
        ]
    out += ["Leads at the end of the period", table(["", "active", "candidate"], counts), ""]
    out += [
        "Conversion by score band (highest score before the opportunity)",
        _side_by_side(a["conversion_by_band"], c["conversion_by_band"], "band"),
        "",
        "Conversion by stage reached before the opportunity",
        _side_by_side(a["conversion_by_stage"], c["conversion_by_stage"], "stage"),
        "",
    ]
    sweep_rows = []
    for ra_row, rc_row in zip(a["threshold_sweep"], c["threshold_sweep"], strict=True):
        sweep_rows.append(
            (
                f"SQL at {ra_row['threshold']}",
                _num(ra_row["sql"]),
                _pct(ra_row["conversion"]),
                _num(ra_row["median_days_to_opportunity"]),
                _num(rc_row["sql"]),
                _pct(rc_row["conversion"]),
                _num(rc_row["median_days_to_opportunity"]),
            )
        )
    out += [
        "Threshold sweep: SQLs, share that became opportunities, median days to opportunity",
        table(
            ["", "active SQLs", "→ opp.", "days", "candidate SQLs", "→ opp.", "days"],
            sweep_rows,
        ),
        "",
    ]
    changes = report["stage_changes"]
    moves = ", ".join(f"{m['from']} → {m['to']}: {m['leads']}" for m in changes["by_move"])
    out.append(
        f"Leads whose stage would change: {changes['count']}" + (f" ({moves})" if moves else "")
    )
    if changes["items"]:
        out.append(
            table(
                ["lead", "active", "candidate"],
                [
                    (
                        item["lead_id"],
                        f"{item['active']['stage']} {item['active']['score']}",
                        f"{item['candidate']['stage']} {item['candidate']['score']}",
                    )
                    for item in changes["items"]
                ],
            )
        )
        if changes["count"] > len(changes["items"]):
            out.append(f"… and {changes['count'] - len(changes['items'])} more")
    return "\n".join(out)


def _side_by_side(active: list[dict[str, Any]], candidate: list[dict[str, Any]], key: str) -> str:
    rows = []
    by_key = {row[key]: row for row in candidate}
    keys = [row[key] for row in active] + [
        row[key] for row in candidate if row[key] not in {r[key] for r in active}
    ]
    blank = {"leads": 0, "opportunities": 0, "conversion": None}
    by_active = {row[key]: row for row in active}
    for name in keys:
        ra, rc = by_active.get(name, blank), by_key.get(name, blank)
        rows.append(
            (
                str(name),
                _num(ra["leads"]),
                _num(ra["opportunities"]),
                _pct(ra["conversion"]),
                _num(rc["leads"]),
                _num(rc["opportunities"]),
                _pct(rc["conversion"]),
            )
        )
    return table([key, "active leads", "opp.", "conv.", "candidate leads", "opp.", "conv."], rows)


def csv_rows(report: dict[str, Any]) -> list[tuple[str, str, str, Any, Any]]:
    """Long format: section, item, metric, active, candidate (one figure per row)."""
    a, c = report["active"], report["candidate"]
    rows: list[tuple[str, str, str, Any, Any]] = []
    for metric in ("leads", "opportunities", "won", "conversion", "auc"):
        rows.append(("overview", "", metric, a[metric], c[metric]))
    for metric in ("to_sql", "to_opportunity", "sql_to_opportunity"):
        rows.append(("median_days", "", metric, a["median_days"][metric], c["median_days"][metric]))
    for dimension in ("letter", "tier", "stage"):
        for key in sorted(set(a["counts"][dimension]) | set(c["counts"][dimension])):
            rows.append(
                (
                    f"count_by_{dimension}",
                    key,
                    "leads",
                    a["counts"][dimension].get(key, 0),
                    c["counts"][dimension].get(key, 0),
                )
            )
    for section, key in (("conversion_by_band", "band"), ("conversion_by_stage", "stage")):
        by_c = {row[key]: row for row in c[section]}
        for row in a[section]:
            other = by_c.get(row[key], {})
            for metric in ("leads", "opportunities", "conversion"):
                rows.append((section, row[key], metric, row[metric], other.get(metric)))
    for ra, rc in zip(a["threshold_sweep"], c["threshold_sweep"], strict=True):
        for metric in ("sql", "opportunities", "conversion", "median_days_to_opportunity"):
            rows.append(("threshold_sweep", str(ra["threshold"]), metric, ra[metric], rc[metric]))
    rows.append(("stage_changes", "", "leads", None, report["stage_changes"]["count"]))
    return rows


def render_csv(report: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["section", "item", "metric", "active", "candidate"])
    for row in csv_rows(report):
        writer.writerow(["" if v is None else v for v in row])
    return buffer.getvalue()


@click.command("backtest")
@click.argument("candidate")
@click.option(
    "--from", "start", help="RFC 3339: leads with an event at or after it (default: all)."
)
@click.option("--to", "end", help="RFC 3339: replay events up to it (default: now).")
@click.option(
    "--format",
    "output",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Processes replaying slices of the leads (default: one per core, at most 4).",
)
@click.option(
    "--changes",
    "changes_limit",
    type=click.IntRange(0, 100_000),
    default=service.DEFAULT_CHANGES_LIMIT,
    show_default=True,
    help="How many leads whose stage would change are listed (all are counted).",
)
def backtest(
    candidate: str,
    start: str | None,
    end: str | None,
    output: str,
    workers: int | None,
    changes_limit: int,
) -> None:
    """Replay stored events under CANDIDATE (a ruleset file, or NAME@VERSION stored) and the
    active ruleset, and print what each would have done with the leads and their outcomes."""
    settings = checked_settings()
    registry = checked_rulesets(settings)
    try:
        period = service.parse_period(start, end)
    except service.BadPeriod as exc:
        raise click.BadParameter(exc.detail, param_hint="--from/--to") from None
    engine = make_engine(settings.database_url)
    try:
        factory = make_session_factory(engine, read_only=True)
        try:
            loaded = load_candidate(candidate, factory)
        except LeadscoreError as exc:
            _fail(exc.detail)
        with factory() as session:
            active = _active_primary(session, registry)
            report = service.run_backtest(
                session,
                active,
                loaded,
                period,
                changes_limit=changes_limit,
                workers=workers or service.default_workers(),
                database_url=settings.database_url,
            )
    finally:
        engine.dispose()
    if output == "json":
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
    elif output == "csv":
        click.echo(render_csv(report), nl=False)
    else:
        click.echo(render_table(report))


def _active_primary(session: Session, folder: RulesetRegistry) -> LoadedRuleset:
    """The primary version the database says is active (what the service scores with, after
    a rollback or a reload --no-activate too); the folder's only on a database never started."""
    stored = RulesetRegistry({}, folder.primary_name)
    try:
        stored.refresh(session)
    except RegistryError:
        return folder.primary
    return stored.primary


@click.command("calibrate")
@click.option(
    "--from", "start", help="RFC 3339: leads with an event at or after it (default: all)."
)
@click.option("--to", "end", help="RFC 3339: replay events up to it (default: now).")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, writable=True),
    help="Where to write the candidate ruleset file.",
)
def calibrate(start: str | None, end: str | None, out: str) -> None:
    """Fit points per rule of the active ruleset to the CRM's outcomes and write a candidate
    file (needs the extra: pip install 'leadscore[calibration]')."""
    from leadscore_api.service.calibration import CalibrationError
    from leadscore_api.service.calibration import calibrate as fit

    settings = checked_settings()
    registry = checked_rulesets(settings)
    try:
        period = service.parse_period(start, end)
    except service.BadPeriod as exc:
        raise click.BadParameter(exc.detail, param_hint="--from/--to") from None
    engine = make_engine(settings.database_url)
    try:
        factory = make_session_factory(engine, read_only=True)
        with factory() as session:
            try:
                result = fit(session, _active_primary(session, registry), period)
            except CalibrationError as exc:
                _fail(str(exc))
    finally:
        engine.dispose()
    Path(out).write_text(result.text, encoding="utf-8")
    click.echo(result.header)
    click.echo(f"\nwritten: {out}")
