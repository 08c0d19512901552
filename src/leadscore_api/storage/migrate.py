"""Apply the Alembic migrations shipped inside the package, from code or the CLI."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy.pool import NullPool

from leadscore_api.storage.db import make_engine

SCRIPT_LOCATION = "leadscore_api:migrations"


def alembic_config(database_url: str) -> Config:
    """An Alembic config that needs no ``alembic.ini`` (the URL travels in ``attributes``).

    The URL is not put in the ini options because ConfigParser would treat ``%`` in passwords
    as interpolation.
    """
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["database_url"] = database_url
    return config


def upgrade_database(database_url: str, revision: str = "head") -> None:
    """Bring the database at ``database_url`` up to ``revision``."""
    engine = make_engine(database_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            config = alembic_config(database_url)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def head_revision() -> str:
    """The newest revision the code ships."""
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    return ScriptDirectory.from_config(config).get_current_head() or ""


def migration_status(database_url: str) -> tuple[str | None, str]:
    """The database's current revision (None when it was never migrated) and the code's head.

    Deployments run migrations as their own step before the new code serves; this is how that
    step (and a readiness check in a pipeline) tells whether there is anything to apply.
    """
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    engine = make_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
    return current, head or ""
