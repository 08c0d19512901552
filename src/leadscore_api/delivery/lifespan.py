"""Runs the delivery and timer loops inside ``leadscore serve`` (unless ``RUN_WORKER=false``).

``create_app`` enters :func:`lifespan` after start-up and leaves it before shutdown; the loops
use the application's session factory and publish their metrics in its registry, so
``/metrics`` shows them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from leadscore_api.config import Settings
from leadscore_api.delivery.timers import tick
from leadscore_api.delivery.worker import running_workers


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if not settings.run_worker:
        yield
        return
    metrics = getattr(app.state, "metrics", None)
    registry = getattr(metrics, "registry", None)
    async with running_workers(
        app.state.session_factory, settings, timer_tick=tick, registry=registry
    ):
        yield
