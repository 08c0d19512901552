"""``leadscore crm``: connect a CRM in one command, and look after the connectors.

``leadscore crm connect KIND --name N --base-url U --credential key=value ...`` stores the
connector, creates its custom fields in the CRM (printing what it created, what existed and
what a person must click), and queues a sync of every current lead, so the first letters are
in the CRM as soon as the worker runs. Problems are printed naming the field, exit status 1.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import click
from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.cli.serve import checked_rulesets, checked_settings
from leadscore_api.config import Settings
from leadscore_api.crm.base import CRM_KINDS, SetupReport
from leadscore_api.errors import LeadscoreError


def _fail(message: str) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(1)


def _problem(exc: LeadscoreError) -> NoReturn:
    lines = [f"{e['field']}: {e['message']}" for e in exc.errors or []] or [exc.detail]
    _fail("\n".join(f"error: {line}" for line in lines))


@contextmanager
def _database(settings: Settings) -> Iterator[sessionmaker[Session]]:
    from leadscore_api.storage.db import make_engine, make_session_factory
    from leadscore_api.storage.migrate import upgrade_database

    upgrade_database(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def _pairs(option: str, values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in values:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            _fail(f"error: {option} {pair!r}: write key=value")
        out[key.strip()] = value
    return out


def _print_setup(name: str, report: SetupReport) -> None:
    click.echo(f"setup of {name}:")
    for field in report.created:
        click.echo(f"  created: {field}")
    for field in report.existing:
        click.echo(f"  existing: {field}")
    for step in report.manual_steps:
        click.echo(f"  to do by hand: {step}")
    if not (report.created or report.existing or report.manual_steps):
        click.echo("  nothing to do")


@click.group()
def crm() -> None:
    """CRM connectors: scores and tasks out to HubSpot, Salesforce, Zoho, Pipedrive; deals back."""


@crm.command("connect")
@click.argument("kind", type=click.Choice(CRM_KINDS))
@click.option("--name", help="Connector name, used in URLs and event ids (default: KIND).")
@click.option("--base-url", required=True, help="The CRM API's base URL.")
@click.option("--credential", "credentials", multiple=True, help="key=value, repeatable.")
@click.option("--field", "fields", multiple=True, help="ours=CRM_FIELD, e.g. letter=Lead_Letter__c")
@click.option("--owner", "owners", multiple=True, help="rep=CRM user id, repeatable.")
@click.option("--option", "options", multiple=True, help="Kind-specific key=value option.")
@click.option("--no-create", is_flag=True, help="Never create CRM records; update existing only.")
@click.option("--no-backfill", is_flag=True, help="Do not queue a sync of every current lead.")
def crm_connect(
    kind: str,
    name: str | None,
    base_url: str,
    credentials: tuple[str, ...],
    fields: tuple[str, ...],
    owners: tuple[str, ...],
    options: tuple[str, ...],
    no_create: bool,
    no_backfill: bool,
) -> None:
    """Store a connector, create its fields in the CRM, and queue every lead's first sync."""
    from leadscore_api.crm.registry import check_connector, parse_spec
    from leadscore_api.service import crm as service

    settings = checked_settings()
    data = {
        "name": name or kind,
        "kind": kind,
        "base_url": base_url,
        "credentials": _pairs("--credential", credentials),
        "field_map": _pairs("--field", fields),
        "owner_map": _pairs("--owner", owners),
        "options": _pairs("--option", options),
        "create_missing": not no_create,
    }
    try:
        spec = parse_spec(data)
        check_connector(spec)  # a refused option stops here, before the database is touched
        with _database(settings) as factory:
            service.create_connector(
                factory, spec, allow_private=settings.webhook_allow_private_targets
            )
            click.echo(f"connector {spec.name} ({spec.kind}) stored")
            try:
                report = asyncio.run(service.run_setup(factory, spec.name, settings))
                _print_setup(spec.name, report)
            except LeadscoreError as exc:
                click.echo(f"setup failed: {exc.detail}; run `leadscore crm setup {spec.name}`")
            if not no_backfill:
                count = service.backfill(factory, spec.name)
                click.echo(f"queued a sync of {count} lead(s) to {spec.name}")
            click.echo(
                f"point the CRM's notifications at https://<your host>/v1/crm/{spec.name}/notifications"
            )
    except LeadscoreError as exc:
        _problem(exc)


@crm.command("list")
def crm_list() -> None:
    """The connectors, one a line."""
    from leadscore_api.service import crm as service

    settings = checked_settings()
    with _database(settings) as factory, factory() as session:
        for row in service.list_connectors(session):
            state = "enabled" if row.enabled else "disabled"
            pulled = row.last_pull_at.isoformat() if row.last_pull_at else "never"
            click.echo(f"{row.name}\t{row.kind}\t{state}\t{row.base_url}\tpulled {pulled}")


@crm.command("setup")
@click.argument("name")
def crm_setup(name: str) -> None:
    """Create the connector's custom fields in the CRM; print what to click where it cannot."""
    from leadscore_api.service import crm as service

    settings = checked_settings()
    try:
        with _database(settings) as factory:
            _print_setup(name, asyncio.run(service.run_setup(factory, name, settings)))
    except LeadscoreError as exc:
        _problem(exc)


@crm.command("pull")
@click.argument("name")
def crm_pull(name: str) -> None:
    """Pull the CRM's recent changes (deals, first contacts) now."""
    from leadscore_api.service import crm as service

    settings = checked_settings()
    registry = checked_rulesets(settings)
    try:
        with _database(settings) as factory:
            registry.bind(factory, settings.ruleset_refresh_seconds)
            result = asyncio.run(
                service.pull_connector(
                    factory, registry, settings, name, owner=service.pull_owner()
                )
            )
    except LeadscoreError as exc:
        _problem(exc)
    if not result.pulled:
        _fail(f"{name}: another process is pulling it now; try again shortly")
    if result.error is not None:
        _fail(f"{name}: pull failed: {result.error}")
    counts = result.counts
    click.echo(
        f"{name}: {counts.accepted} new outcome(s), {counts.duplicate} already known, "
        f"{counts.unknown_person} about people we do not score, {counts.rejected} rejected"
    )


@crm.command("apply")
@click.argument("path", type=click.Path(dir_okay=False))
def crm_apply(path: str) -> None:
    """Upsert the connectors of a YAML file by name (secrets as ${ENV_VAR})."""
    from leadscore_api.crm.registry import load_file
    from leadscore_api.service import crm as service

    settings = checked_settings()
    try:
        specs = load_file(path)
        with _database(settings) as factory:
            applied = service.apply_specs(
                factory, specs, allow_private=settings.webhook_allow_private_targets
            )
    except LeadscoreError as exc:
        _problem(exc)
    for item in applied:
        click.echo(f"{item.name}: {item.action}")
