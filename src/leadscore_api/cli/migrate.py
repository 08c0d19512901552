"""``leadscore migrate``: apply the database migrations as a deployment step of their own.

``leadscore serve`` migrates on start, which suits one process on SQLite; with several replicas
the migration runs once, before the new version rolls out (``serve --no-migrate``), so that no
replica ever races another to alter a table (docs/operations.md, "Upgrades").
"""

from __future__ import annotations

import sys

import click

from leadscore_api.cli.serve import checked_settings


@click.command()
@click.option(
    "--status",
    is_flag=True,
    help="Print the database's revision and the code's; exit 3 when migrations are pending.",
)
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def migrate(status: bool, revision: str) -> None:
    """Apply the database migrations (settings from LEADSCORE_* / .env)."""
    from leadscore_api.storage.migrate import migration_status, upgrade_database

    settings = checked_settings()
    if status:
        current, head = migration_status(settings.database_url)
        click.echo(f"database revision: {current or '(none)'}\ncode head: {head}")
        if current != head:
            click.echo("migrations pending: run `leadscore migrate`", err=True)
            sys.exit(3)
        return
    before, head = migration_status(settings.database_url)
    upgrade_database(settings.database_url, revision)
    after, _ = migration_status(settings.database_url)
    if before == after:
        click.echo(f"database already at {after}")
    else:
        click.echo(f"database migrated: {before or '(empty)'} -> {after}")
