"""The database schema and the OpenAPI description agree with the code."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.pool import NullPool

from leadscore_api.openapi import render
from leadscore_api.storage.db import make_engine
from leadscore_api.storage.dialects import include_object_for
from leadscore_api.storage.metadata import all_tables
from leadscore_api.storage.migrate import alembic_config, upgrade_database

ROOT = Path(__file__).resolve().parents[2]


def _diff(database_url: str) -> list[object]:
    engine = make_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            opts = {
                "compare_type": True,
                # What the models declare for the other database only is not compared here.
                "include_object": include_object_for(connection.dialect.name),
            }
            context = MigrationContext.configure(connection, opts=opts)
            return list(compare_metadata(context, all_tables()))
    finally:
        engine.dispose()


def test_migrations_match_the_models(database_url: str) -> None:
    upgrade_database(database_url)
    assert _diff(database_url) == []


def test_migrations_downgrade_and_upgrade_again(database_url: str) -> None:
    from alembic import command

    upgrade_database(database_url)
    engine = make_engine(database_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            config = alembic_config(database_url)
            config.attributes["connection"] = connection
            command.downgrade(config, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    upgrade_database(database_url)
    assert _diff(database_url) == []


def test_openapi_yaml_is_up_to_date() -> None:
    committed = (ROOT / "openapi.yaml").read_text(encoding="utf-8")
    assert committed == render(), (
        "openapi.yaml is out of date: run `python -m leadscore_api.openapi > openapi.yaml`"
    )
