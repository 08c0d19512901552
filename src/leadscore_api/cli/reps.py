"""``leadscore reps``: check the rep directory file, sync it into the database, list the reps.

Problems in the file are printed as ``FILE:LINE: message`` with exit status 1, like
``leadscore rules validate``. Without a FILE the commands use ``directory/reps.yaml`` in the
rules folder in force (``LEADSCORE_RULES_DIR``, else ``./rules``, else the bundled rules; the
bundled directory is an example, which ``sync`` only loads when it is named).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click

from leadscore_api.cli.serve import checked_settings
from leadscore_api.config import BUNDLED_RULES_DIR
from leadscore_api.service.rep_file import (
    DIRECTORY_FILE,
    DirectoryFileError,
    directory_file_in,
    load_directory_file,
)


def _fail(message: str) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(1)


def _file(path: str | None, *, example_ok: bool = True) -> Path:
    if path is not None:
        return Path(path)
    rules_dir = checked_settings().resolved_rules_dir()
    found = directory_file_in(rules_dir)
    if found is None:
        _fail(f"error: no rep directory file at {rules_dir / DIRECTORY_FILE}; name one")
    if not example_ok and rules_dir == BUNDLED_RULES_DIR:
        # The bundled directory lists example people: never load them into a database unasked.
        _fail(
            f"error: no ./rules folder or LEADSCORE_RULES_DIR, and {found} is an example;"
            " name the file to sync it anyway"
        )
    return found


@click.group()
def reps() -> None:
    """The rep directory that routing hands leads to."""


@reps.command("validate")
@click.argument("path", required=False, type=click.Path())
def reps_validate(path: str | None) -> None:
    """Check a directory file; exit 1 listing FILE:LINE: problem."""
    target = _file(path)
    try:
        directory = load_directory_file(target)
    except DirectoryFileError as exc:
        _fail(str(exc))
    click.echo(f"{target}: ok ({directory.summary()})")


@reps.command("sync")
@click.argument("path", required=False, type=click.Path())
def reps_sync(path: str | None) -> None:
    """Apply a directory file to the database (migrations first).

    Reps of the file are created or updated; reps the file managed and no longer lists are
    deactivated, and their open leads handed to the other reps of their team.
    """
    from leadscore_api.service.reps import sync_directory
    from leadscore_api.storage.db import make_engine, make_session_factory
    from leadscore_api.storage.migrate import upgrade_database

    target = _file(path, example_ok=False)
    try:
        load_directory_file(target)
    except DirectoryFileError as exc:
        _fail(str(exc))
    settings = checked_settings()
    upgrade_database(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        report = sync_directory(make_session_factory(engine), target)
    finally:
        engine.dispose()
    click.echo(f"{target}: {report.summary()}")


@reps.command("list")
@click.option("--team", default=None, help="Only this team.")
@click.option("--all", "show_all", is_flag=True, help="Inactive reps too.")
def reps_list(team: str | None, show_all: bool) -> None:
    """List reps: id, team, name, open leads/capacity, regions, industries, state."""
    from leadscore_api.service.reps import list_reps
    from leadscore_api.storage.db import make_engine, make_session_factory

    settings = checked_settings()
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine, read_only=True)() as session:
            for view in list_reps(session, team, None if show_all else True):
                rep = view.rep
                load = f"{view.open_leads}/{rep.capacity if rep.capacity is not None else '-'}"
                click.echo(
                    "\t".join(
                        [
                            rep.id,
                            rep.team,
                            rep.name,
                            load,
                            ",".join(rep.regions) or "*",
                            ",".join(rep.industries) or "*",
                            "active" if rep.active else "inactive",
                        ]
                    )
                )
    finally:
        engine.dispose()
