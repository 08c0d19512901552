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
