"""``leadscore costs``: import acquisition costs from a CSV file, list them.

The file is the one ``POST /v1/costs/import`` takes (``source,month,amount``, ``;`` works too,
Italian amounts such as ``1.250,50``); it is checked whole first and nothing is stored when a
row is bad: each bad row is printed as ``FILE: rows[N].column: problem`` with exit status 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from leadscore_api.cli.serve import checked_settings


@click.group()
def costs() -> None:
    """Acquisition costs per source and month (cost per lead, channel ROI)."""


@costs.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def costs_import(path: Path) -> None:
    """Store every row of a costs CSV file (migrations first), or none."""
    from leadscore_api.errors import InvalidInput
    from leadscore_api.service.costs import import_csv
    from leadscore_api.storage.db import make_engine, make_session_factory
    from leadscore_api.storage.migrate import upgrade_database

    settings = checked_settings()
    upgrade_database(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        stored = import_csv(make_session_factory(engine), path.read_bytes())
    except InvalidInput as exc:
        for problem in exc.errors or [{"field": "file", "message": exc.detail}]:
            click.echo(f"{path}: {problem['field']}: {problem['message']}", err=True)
        sys.exit(1)
    finally:
        engine.dispose()
    click.echo(f"{path}: {len(stored)} costs stored")


@costs.command("list")
@click.option("--source", default=None, help="Only this source.")
def costs_list(source: str | None) -> None:
    """Month, source and amount (EUR) of every entered cost."""
    from leadscore_api.service.costs import list_costs
    from leadscore_api.storage.db import make_engine, make_session_factory

    settings = checked_settings()
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine, read_only=True)() as session:
            for entry in list_costs(session, source=source):
                click.echo(f"{entry.month}\t{entry.source}\t{entry.amount:.2f}")
    finally:
        engine.dispose()
