"""``leadscore serve`` and ``leadscore apikey``: run the service, manage API keys from a shell."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, NoReturn

import click

from leadscore_api import logs
from leadscore_api.config import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from leadscore_api.service.rulesets import RulesetRegistry


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def checked_rulesets(settings: Settings) -> RulesetRegistry:
    """The rulesets, or exit 1 with every problem as ``FILE:LINE: message``."""
    from leadscore_api.scoring import RuleFileError
    from leadscore_api.service.rulesets import RegistryError, RulesetRegistry

    try:
        return RulesetRegistry.load(settings)
    except (RuleFileError, RegistryError) as exc:
        _fail(f"the rules cannot be loaded; not starting.\n{exc}")


def checked_directory(settings: Settings) -> None:
    """Exit 1 with ``FILE:LINE: message`` lines when the rep directory file does not load."""
    from leadscore_api.service.rep_file import DirectoryFileError, load_directory_file
    from leadscore_api.service.reps import directory_file_for

    path = directory_file_for(settings)
    if path is None:
        return
    try:
        load_directory_file(path)
    except DirectoryFileError as exc:
        _fail(f"the rep directory cannot be loaded; not starting.\n{exc}")


def checked_settings() -> Settings:
    """The settings, or exit 1 with each bad variable named (before anything starts)."""
    try:
        return load_settings()
    except SettingsError as exc:
        _fail(f"{exc}\nnot starting.")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port.")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Worker processes (they share the database; no state in the process).",
)
@click.option("--no-migrate", is_flag=True, help="Do not apply database migrations first.")
def serve(host: str, port: int, workers: int, no_migrate: bool) -> None:
    """Apply migrations, then serve the HTTP API (settings from LEADSCORE_* / .env).

    SIGHUP reloads the rules folder (as `leadscore rules reload`); the outcome goes to the log.
    """
    import uvicorn

    from leadscore_api.storage.migrate import upgrade_database

    settings = checked_settings()
    logs.configure(settings.log_format, settings.log_level)
    checked_rulesets(settings)
    checked_directory(settings)
    if not no_migrate:
        upgrade_database(settings.database_url)
    click.echo(
        f"leadscore: serving http://{host}:{port} (database {_safe_url(settings.database_url)},"
        f" rules {settings.resolved_rules_dir()})",
        err=True,
    )
    if workers > 1:
        uvicorn.run(
            "leadscore_api.cli.serve:served_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            proxy_headers=True,
            # The access log is the app's own (request id, no query string), in our format.
            access_log=False,
            log_config=None,
        )
    else:
        uvicorn.run(
            served_app(settings),
            host=host,
            port=port,
            proxy_headers=True,
            # The access log is the app's own (request id, no query string), in our format.
            access_log=False,
            log_config=None,
        )


def served_app(settings: Settings | None = None) -> FastAPI:
    """The application as ``leadscore serve`` runs it (also the factory of each worker)."""
    from leadscore_api.app import create_app
    from leadscore_api.runtime import freeze_startup_objects, reload_on_hangup

    if settings is None:
        # A worker process of `serve --workers N`: its logging is set up afresh.
        settings = load_settings()
        logs.configure(settings.log_format, settings.log_level)
    return create_app(settings, lifespan_hooks=[freeze_startup_objects, reload_on_hangup])


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@click.group()
def apikey() -> None:
    """Create, list and revoke API keys directly in the database."""


@apikey.command("create")
@click.option("--name", required=True, help="What the key is for, e.g. crm-sync.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    help="A scope to grant; repeat for several (events:write, leads:read, ...).",
)
def apikey_create(name: str, scopes: tuple[str, ...]) -> None:
    """Create a key and print it (the only time it is shown)."""
    from leadscore_api.service import api_keys
    from leadscore_api.storage.db import make_engine, make_session_factory
    from leadscore_api.storage.migrate import upgrade_database

    try:
        checked = api_keys.check_scopes(scopes)
    except api_keys.UnknownScope as exc:
        _fail(exc.message)
    settings = checked_settings()
    upgrade_database(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        _row, key = api_keys.create_key(make_session_factory(engine), name, checked)
    finally:
        engine.dispose()
    click.echo(key)


@apikey.command("list")
def apikey_list() -> None:
    """List keys (id, name, scopes, revoked); never the secrets."""
    from leadscore_api.service import api_keys
    from leadscore_api.storage.db import make_engine, make_session_factory

    settings = checked_settings()
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine, read_only=True)() as session:
            for row in api_keys.list_keys(session):
                state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
                click.echo(f"{row.id}\t{row.name}\t{','.join(row.scopes)}\t{state}")
    finally:
        engine.dispose()


@apikey.command("revoke")
@click.argument("key_id")
def apikey_revoke(key_id: str) -> None:
    """Revoke the key with this id."""
    from leadscore_api.errors import NotFound
    from leadscore_api.service import api_keys
    from leadscore_api.storage.db import make_engine, make_session_factory

    settings = checked_settings()
    engine = make_engine(settings.database_url)
    try:
        api_keys.revoke_key(make_session_factory(engine), key_id)
    except NotFound as exc:
        _fail(exc.detail)
    finally:
        engine.dispose()
    click.echo(f"revoked {key_id}")
