"""``leadscore import``, ``leadscore export`` and ``leadscore demo``: leads to and from sheets.

They work on the configured database (``LEADSCORE_DATABASE_URL``, default ``./leadscore.db``),
applying migrations first, with the configured rules.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from leadscore_api.cli.serve import checked_rulesets, checked_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from leadscore_api.config import Settings
    from leadscore_api.errors import LeadscoreError
    from leadscore_api.service.lead_import import ImportReport


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _problem(exc: LeadscoreError) -> NoReturn:
    click.echo(f"error: {exc.detail}", err=True)
    for error in (exc.errors or [])[1:]:
        click.echo(f"  {error['field']}: {error['message']}", err=True)
    sys.exit(1)


@contextmanager
def _database(settings: Settings, *, read_only: bool = False) -> Iterator[sessionmaker[Session]]:
    from leadscore_api.storage.db import make_engine, make_session_factory
    from leadscore_api.storage.migrate import upgrade_database

    upgrade_database(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        yield make_session_factory(engine, read_only=read_only)
    finally:
        engine.dispose()


def _column_map(map_json: str | None, pairs: tuple[str, ...]) -> dict[str, str | None]:
    from leadscore_api.service.lead_import import parse_column_map

    mapping = parse_column_map(map_json)
    for pair in pairs:
        header, sep, target = pair.rpartition("=")
        if not sep or not header:
            _fail(f"--map {pair!r}: write HEADER=attribute (or HEADER= to ignore the column)")
        mapping[header] = target or None
    return mapping


@click.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--map", "pairs", multiple=True, help="HEADER=attribute; repeat. HEADER= ignores it.")
@click.option("--column-map", "map_json", default=None, help='JSON: {"Ruolo": "role", ...}.')
@click.option("--dry-run", is_flag=True, help="Only check the file; print each row's problems.")
@click.option("--sheet", default=None, help="XLSX: the sheet to read (default: the first).")
@click.option("--encoding", default="utf-8-sig", show_default=True, help="CSV text encoding.")
def import_command(
    path: Path,
    pairs: tuple[str, ...],
    map_json: str | None,
    dry_run: bool,
    sheet: str | None,
    encoding: str,
) -> None:
    """Import leads from a CSV or XLSX file and score them (every row is checked first).

    Columns are recognised by their headers in Italian or English (Email, Ruolo, Settore,
    Dipendenti, Fatturato, Regione...); --map names the others. Exit 1 when a row has a
    problem (then nothing is imported), listing ROW, COLUMN and the problem.
    """
    from leadscore_api.errors import LeadscoreError
    from leadscore_api.service import lead_import
    from leadscore_api.storage.base import utcnow

    settings = checked_settings()
    registry = checked_rulesets(settings)
    try:
        options = lead_import.ImportOptions(
            column_map=_column_map(map_json, pairs), sheet=sheet, encoding=encoding
        )
        with _database(settings) as factory:
            now = utcnow()
            report = lead_import.check_file(path, options, now=now)
            _print_report(report)
            if not report.ok:
                sys.exit(1)
            if dry_run:
                return
            report = lead_import.import_file(
                factory, registry, path, options, now=now, checked=report
            )
    except LeadscoreError as exc:
        _problem(exc)
    for row, remark in report.warnings:
        click.echo(f"row {row}\twarning\t{remark}", err=True)
    click.echo(
        f"{path}: imported {report.imported}, unchanged {report.unchanged},"
        f" rejected {report.rejected}"
        + (f", skipped {report.erased} of erased people" if report.erased else "")
    )


def _print_report(report: ImportReport) -> None:
    columns = ", ".join(f"{h} → {t}" for h, t in report.columns.items())
    click.echo(f"columns: {columns}", err=True)
    if report.ignored_columns:
        click.echo(f"ignored columns: {', '.join(report.ignored_columns)}", err=True)
    for problem in report.errors:
        column = problem.column if problem.column is not None else "-"
        click.echo(f"row {problem.row}\t{column}\t{problem.message}")
    hidden = report.error_count - len(report.errors)
    if hidden:
        click.echo(f"... and {hidden} more problems")
    click.echo(
        f"checked {report.rows} rows: {report.valid_rows} good, {report.error_count} problems",
        err=True,
    )


@click.command("export")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File to write (.csv or .xlsx); default: CSV on standard output.",
)
@click.option("--format", "file_format", type=click.Choice(["csv", "xlsx"]), default=None)
@click.option("--tier", default=None)
@click.option("--stage", default=None)
@click.option("--letter", default=None)
@click.option("--min-score", type=click.IntRange(0, 100), default=None)
@click.option("--owner", default=None)
def export_command(
    output: Path | None,
    file_format: str | None,
    tier: str | None,
    stage: str | None,
    letter: str | None,
    min_score: int | None,
    owner: str | None,
) -> None:
    """Export scored leads (letter, score, tier, stage, owner, next action, due, attributes)."""
    from leadscore_api.service import lead_export
    from leadscore_api.storage.repositories.leads import LeadFilters

    chosen = file_format or ("xlsx" if output and output.suffix.lower() == ".xlsx" else "csv")
    if chosen == "xlsx" and output is None:
        _fail("an XLSX export needs --output FILE.xlsx")
    filters = LeadFilters(tier=tier, stage=stage, letter=letter, min_score=min_score, owner=owner)
    settings = checked_settings()
    with _database(settings, read_only=True) as factory:
        if output is None:
            for piece in lead_export.csv_chunks(factory, filters):
                sys.stdout.write(piece)
            return
        if chosen == "xlsx":
            count = lead_export.write_xlsx(factory, filters, output)
        else:
            count = lead_export.write_csv(factory, filters, output)
    click.echo(f"{output}: {count} leads", err=True)


@click.command("demo")
@click.option("--leads", "count", default=3000, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--seed", default=42, show_default=True, type=int, help="Same seed, same quarter.")
@click.option("--force", is_flag=True, help="Add the demo even if the database has leads.")
@click.option(
    "--costs-csv",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the acquisition costs (source, month, amount_eur) to this CSV file.",
)
def demo_command(count: int, seed: int, force: bool, costs_csv: Path | None) -> None:
    """Fill the configured database with a realistic quarter of leads, events and outcomes.

    Everything goes through the real ingestion path, so scores, history, stages and routing
    are what the service would have computed. Refuses a database that already has leads.
    """
    import csv

    from leadscore_api.errors import LeadscoreError
    from leadscore_api.service.demo import run_demo
    from leadscore_api.storage.db import make_engine, make_session_factory
    from leadscore_api.storage.migrate import upgrade_database

    settings = checked_settings()
    registry = checked_rulesets(settings)
    upgrade_database(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        report = run_demo(
            make_session_factory(engine),
            make_session_factory(engine, read_only=True),
            registry,
            leads=count,
            seed=seed,
            force=force,
        )
    except LeadscoreError as exc:
        _problem(exc)
    finally:
        engine.dispose()
    letters = ", ".join(f"{k} {v}" for k, v in report.letters.items())
    click.echo(
        f"demo: {report.leads} leads ({letters}), {report.events} events in"
        f" {report.seconds:.1f} s\n"
        f"  MQL {report.mql}, SQL {report.sql}, contacted {report.contacted}"
        f" ({report.contacted_late} after more than 4 h), opportunities {report.opportunities},"
        f" won {report.won}, lost {report.lost}"
    )
    click.echo(f"  acquisition costs: {len(report.costs)} rows stored")
    if costs_csv is not None:
        with costs_csv.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["source", "month", "amount_eur"])
            writer.writerows(report.costs)
        click.echo(f"  and written to {costs_csv}")
