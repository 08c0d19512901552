"""The ``leadscore`` command: rule authoring tools, the HTTP service, the delivery worker, keys."""

from __future__ import annotations

import click

from leadscore_api.cli.citus import citus_plan
from leadscore_api.cli.costs import costs
from leadscore_api.cli.crm import crm
from leadscore_api.cli.migrate import migrate
from leadscore_api.cli.reps import reps
from leadscore_api.cli.rules import rules
from leadscore_api.cli.serve import apikey, serve
from leadscore_api.cli.spreadsheets import demo_command, export_command, import_command
from leadscore_api.cli.worker import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="leadscore")
def main() -> None:
    """Lead scoring for small and medium businesses."""


main.add_command(rules)
main.add_command(serve)
main.add_command(migrate)
main.add_command(apikey)
main.add_command(worker)
main.add_command(reps)
main.add_command(import_command)
main.add_command(export_command)
main.add_command(demo_command)
main.add_command(costs)
main.add_command(crm)
main.add_command(citus_plan)
