"""``leadscore rules challenge``: run a stored version as a challenger, report on it, promote it.

One command with modes, as the ops guide reads: ``challenge NAME VERSION`` starts the A/B test,
``--report NAME`` compares the two on the same leads, ``--promote NAME`` activates the
challenger and ends the test, ``--stop NAME`` ends it without switching.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import click

from leadscore_api.cli.backtest import table
from leadscore_api.cli.serve import checked_settings
from leadscore_api.errors import LeadscoreError
from leadscore_api.storage.db import make_engine, make_session_factory

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker


@contextmanager
def _database(*, migrate: bool) -> Iterator[sessionmaker[Session]]:
    """The configured database (migrated first for commands that write), disposed after."""
    from leadscore_api.storage.migrate import upgrade_database

    settings = checked_settings()
    if migrate:
        upgrade_database(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def _refuse(exc: LeadscoreError) -> NoReturn:
    """A refusal on the terminal: one ``field: message`` line per named field."""
    if exc.errors:
        for error in exc.errors:
            click.echo(f"{error['field']}: {error['message']}", err=True)
    else:
        click.echo(f"error: {exc.detail}", err=True)
    sys.exit(1)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def render_table(report: dict[str, Any]) -> str:
    a, c = report["champion"], report["challenger"]
    lines = [
        f"{report['name']}: champion v{a['version']} vs challenger v{c['version']}"
        f" since {report['started_at']}",
        f"leads scored by both: {report['leads']}; opportunities: {report['opportunities']}"
        f" ({_pct(report['conversion'])})",
        f"AUC (score -> opportunity): champion {a['auc'] if a['auc'] is not None else '-'},"
        f" challenger {c['auc'] if c['auc'] is not None else '-'}",
        "",
    ]
    for dimension in ("letter", "tier", "stage"):
        keys = sorted(set(a["counts"][dimension]) | set(c["counts"][dimension]))
        rows = [
            (k, str(a["counts"][dimension].get(k, 0)), str(c["counts"][dimension].get(k, 0)))
            for k in keys
        ]
        lines += [table([dimension, "champion", "challenger"], rows), ""]
    by_c = {row["band"]: row for row in c["conversion_by_band"]}
    band_rows = [
        (
            row["band"],
            str(row["leads"]),
            str(row["opportunities"]),
            _pct(row["conversion"]),
            str(by_c[row["band"]]["leads"]),
            str(by_c[row["band"]]["opportunities"]),
            _pct(by_c[row["band"]]["conversion"]),
        )
        for row in a["conversion_by_band"]
    ]
    lines += [
        table(
            ["band", "champion leads", "opp.", "conv.", "challenger leads", "opp.", "conv."],
            band_rows,
        ),
        "",
    ]
    d = report["disagreements"]
    lines.append(f"leads they disagree on (stage or tier): {d['count']}")
    if d["items"]:
        items = [
            (
                i["lead_id"],
                f"{i['champion']['stage']}/{i['champion']['tier']}/{i['champion']['score']}",
                f"{i['challenger']['stage']}/{i['challenger']['tier']}/{i['challenger']['score']}",
                "yes" if i["opportunity"] else "no",
            )
            for i in d["items"]
        ]
        lines.append(
            table(["lead", "champion stage/tier/score", "challenger", "opportunity"], items)
        )
    return "\n".join(lines)


def render_csv(report: dict[str, Any]) -> str:
    """Long format: section, item, metric, champion, challenger (one figure per row)."""
    a, c = report["champion"], report["challenger"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["section", "item", "metric", "champion", "challenger"])
    writer.writerow(["overview", "", "version", a["version"], c["version"]])
    writer.writerow(["overview", "", "leads", report["leads"], report["leads"]])
    writer.writerow(["overview", "", "auc", _blank(a["auc"]), _blank(c["auc"])])
    for dimension in ("letter", "tier", "stage"):
        for key in sorted(set(a["counts"][dimension]) | set(c["counts"][dimension])):
            writer.writerow(
                [
                    f"count_by_{dimension}",
                    key,
                    "leads",
                    a["counts"][dimension].get(key, 0),
                    c["counts"][dimension].get(key, 0),
                ]
            )
    by_c = {row["band"]: row for row in c["conversion_by_band"]}
    for row in a["conversion_by_band"]:
        for metric in ("leads", "opportunities", "conversion"):
            other = by_c[row["band"]][metric]
            writer.writerow(
                ["conversion_by_band", row["band"], metric, _blank(row[metric]), _blank(other)]
            )
    writer.writerow(["disagreements", "", "leads", report["disagreements"]["count"], ""])
    return buffer.getvalue()


def _blank(value: Any) -> Any:
    return "" if value is None else value


#: As the API's path parameter: what rule files may name a ruleset.
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,99}")


def _checked_name(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """Refuse a hostile NAME (NUL, surrogates, length) before it reaches the database."""
    if not _NAME.fullmatch(value):
        raise click.BadParameter(
            "a ruleset name: lowercase letters, digits, '-' and '_', at most 100 characters"
        )
    return value


@click.command("challenge")
@click.argument("name", callback=_checked_name)
@click.argument("version", required=False, type=click.IntRange(min=1))
@click.option("--stop", is_flag=True, help="End the challenge of NAME (its results go).")
@click.option("--report", is_flag=True, help="Compare champion and challenger of NAME.")
@click.option("--promote", is_flag=True, help="Activate the challenger of NAME, end the test.")
@click.option(
    "--format",
    "output",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="How --report prints.",
)
@click.option(
    "--limit",
    type=click.IntRange(0, 1000),
    default=100,
    show_default=True,
    help="Disagreeing leads --report lists (all are counted).",
)
@click.option("--rescore", is_flag=True, help="With --promote: queue a re-score of every lead.")
@click.option("--emit-webhooks", is_flag=True, help="Send the re-score's transitions.")
def challenge(
    name: str,
    version: int | None,
    stop: bool,
    report: bool,
    promote: bool,
    output: str,
    limit: int,
    rescore: bool,
    emit_webhooks: bool,
) -> None:
    """Score stored VERSION of NAME beside the active one on every event, acting on nothing.

    With --report, --promote or --stop (and no VERSION): compare, switch to it, or end it.
    """
    from leadscore_api.service import challenger as service
    from leadscore_api.service import lifecycle

    modes = sum((stop, report, promote))
    if modes > 1:
        raise click.UsageError("choose one of --stop, --report, --promote")
    if modes == 0 and version is None:
        raise click.UsageError("give the VERSION to challenge with (or --stop/--report/--promote)")
    if modes == 1 and version is not None:
        raise click.UsageError("VERSION goes only with starting a challenge")
    with _database(migrate=not report) as factory:
        try:
            if report:
                with factory() as session:
                    result = service.report(session, name, limit)
            elif promote:
                switch, job = service.promote(
                    factory, None, name, lifecycle.Rescore(rescore, emit_webhooks)
                )
            elif stop:
                ended = service.end(factory, None, name)
            else:
                assert version is not None
                started = service.start(factory, None, name, version)
        except LeadscoreError as exc:
            _refuse(exc)
    if report:
        if output == "json":
            click.echo(json.dumps(result, indent=2, ensure_ascii=False, default=str))
        elif output == "csv":
            click.echo(render_csv(result), nl=False)
        else:
            click.echo(render_table(result))
    elif promote:
        click.echo(
            f"{name}: challenger v{switch.version} promoted"
            f" (was v{switch.previous_version}); the challenge is over"
        )
        if job is not None:
            click.echo(f"re-score queued: job {job.id} ({job.total} leads); GET /v1/jobs/{job.id}")
    elif stop:
        click.echo(f"{name}: challenger v{ended.version} stopped")
    elif started.changed:
        click.echo(
            f"{name}: v{started.version} challenges v{started.champion_version};"
            " every replica scores it from its next refresh"
        )
    else:
        click.echo(f"{name}: v{started.version} was already the challenger")
