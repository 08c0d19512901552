"""``leadscore worker``: the delivery, timer and job loops (fresh scores, timers, re-scores)
without the HTTP API.

Run as many as you like against PostgreSQL (rows are claimed with ``FOR UPDATE SKIP LOCKED``);
on SQLite run one, or none besides ``leadscore serve``, which runs the loops itself unless
``LEADSCORE_RUN_WORKER=false``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import click
from prometheus_client import CollectorRegistry, start_http_server

from leadscore_api import logs
from leadscore_api.cli.serve import checked_rulesets, checked_settings
from leadscore_api.config import Settings
from leadscore_api.delivery.worker import running_workers
from leadscore_api.service.crm import running_pull
from leadscore_api.service.freshness import time_tick
from leadscore_api.service.jobs import running_jobs
from leadscore_api.service.rulesets import RulesetRegistry
from leadscore_api.storage.db import make_engine, make_session_factory


async def _run(
    settings: Settings, rulesets: RulesetRegistry, registry: CollectorRegistry, **overrides: int
) -> None:
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    # Follow the versions the database says are active, as every replica does.
    rulesets.bind(factory, settings.ruleset_refresh_seconds)
    try:
        async with (
            running_workers(
                factory, settings, timer_tick=time_tick(rulesets), registry=registry, **overrides
            ),
            running_jobs(factory, rulesets, settings.job_poll_seconds),
            running_pull(factory, rulesets, settings),
        ):
            await stop.wait()
    finally:
        engine.dispose()


@click.command()
@click.option(
    "--migrate/--no-migrate",
    default=False,
    show_default=True,
    help="Apply the database migrations first (serve does it; do it once, not per replica).",
)
@click.option("--concurrency", type=click.IntRange(1, 1000), default=16, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 5000), default=100, show_default=True)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve the worker's Prometheus metrics on this port.",
)
def worker(migrate: bool, concurrency: int, batch_size: int, metrics_port: int | None) -> None:
    """Deliver outbound webhooks, fire time-driven transitions, run re-score jobs (no HTTP API)."""
    settings = checked_settings()
    logs.configure(settings.log_format, settings.log_level)
    rulesets = checked_rulesets(settings)
    if migrate:
        from leadscore_api.storage.migrate import upgrade_database

        upgrade_database(settings.database_url)
    registry = CollectorRegistry()
    if metrics_port is not None:
        start_http_server(metrics_port, registry=registry)
    click.echo(f"leadscore worker: delivering from {_safe_url(settings.database_url)}", err=True)
    asyncio.run(_run(settings, rulesets, registry, concurrency=concurrency, batch_size=batch_size))


def _safe_url(url: str) -> str:
    """The database URL without its password, for the log."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
