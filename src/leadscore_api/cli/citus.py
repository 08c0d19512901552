"""``leadscore citus-plan``: the SQL that distributes a migrated database over Citus.

Printed from the classification of every table (``storage/distribution.py``), so the plan and
the schema cannot drift apart: a new table without a place stops the command (and a test).
"""

from __future__ import annotations

import click


@click.command("citus-plan")
@click.option(
    "--coordinator-host",
    default="localhost",
    show_default=True,
    help="The coordinator's address as the workers reach it (citus_set_coordinator_host).",
)
@click.option("--coordinator-port", default=5432, show_default=True, type=click.IntRange(1, 65535))
def citus_plan(coordinator_host: str, coordinator_port: int) -> None:
    """Print the SQL that distributes the schema over Citus, by lead id (docs/operations.md)."""
    from leadscore_api.storage.distribution import render_plan
    from leadscore_api.storage.metadata import all_tables
    from leadscore_api.storage.migrate import head_revision

    click.echo(
        render_plan(
            all_tables(),
            head_revision(),
            coordinator_host=coordinator_host,
            coordinator_port=coordinator_port,
        ),
        nl=False,
    )
