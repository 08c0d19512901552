"""The FastAPI application.

``create_app(settings)`` wires everything from one ``Settings`` object and keeps what routers
need on ``app.state``: ``settings``, ``engine``, ``session_factory`` (writes),
``read_session_factory`` (reads), ``ingest_writer`` (group commit of ``POST /v1/events``),
``checkpointer`` (SQLite's background WAL checkpoints, None
elsewhere), ``registry`` (the loaded rulesets) and ``metrics``. The routers are listed in
:mod:`leadscore_api.api.routers`; the delivery worker and timer loops run inside the app unless
``settings.run_worker`` is off; callers can add their own start-up hooks with
``create_app(settings, lifespan_hooks=[...])``.

The app does not migrate the database: ``leadscore serve`` does, once, before starting it, so
replicas starting together do not race on DDL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.concurrency import run_in_threadpool

from leadscore_api import __version__, logs
from leadscore_api.api.metrics import Metrics
from leadscore_api.api.middleware import (
    BodyLimitMiddleware,
    InputGuardMiddleware,
    MetricsMiddleware,
    RequestContextMiddleware,
)
from leadscore_api.api.problems import ProblemDetail, document_problems, install_problem_handlers
from leadscore_api.api.rate_limits import rate_limits_for
from leadscore_api.api.routers import ROUTERS
from leadscore_api.config import Settings, get_settings
from leadscore_api.delivery.worker import running_workers
from leadscore_api.ingest.events import CanonicalEvent
from leadscore_api.service import delivery
from leadscore_api.service.api_keys import PrincipalCache
from leadscore_api.service.crm import apply_file, running_pull
from leadscore_api.service.freshness import time_tick
from leadscore_api.service.group_commit import GroupCommitter
from leadscore_api.service.jobs import running_jobs
from leadscore_api.service.report_cache import ReportCache, keep_warm
from leadscore_api.service.reps import directory_file_for, sync_directory
from leadscore_api.service.rulesets import (
    RulesetRegistry,
    follow_activations,
    start_following,
)
from leadscore_api.storage.checkpoints import WalCheckpointer
from leadscore_api.storage.db import make_engine, make_session_factory

log = logging.getLogger("leadscore")

#: Routes that check each item of a batch themselves, so one bad event is rejected alone.
PER_ITEM_PATHS = ("/v1/events", "/v1/webhooks/")

LifespanHook = Callable[[FastAPI], AbstractAsyncContextManager[None]]

DESCRIPTION = """Lead scoring for small and medium businesses: events in, scores, history and
transitions out. Authenticate with `Authorization: Bearer <api key>`; errors are
`application/problem+json` (RFC 9457)."""


@asynccontextmanager
async def delivery_loops(app: FastAPI) -> AsyncIterator[None]:
    """The delivery worker, the timer loop (fresh scores, SLA and re-qualification timers), the
    background jobs (re-scores) and the CRM pull, inside ``leadscore serve`` unless
    ``RUN_WORKER`` is off."""
    settings: Settings = app.state.settings
    if not settings.run_worker:
        yield
        return
    metrics: Metrics = app.state.metrics
    async with (
        running_workers(
            app.state.session_factory,
            settings,
            timer_tick=time_tick(app.state.registry),
            registry=metrics.registry,
        ),
        running_jobs(app.state.session_factory, app.state.registry, settings.job_poll_seconds),
        running_pull(app.state.session_factory, app.state.registry, settings),
    ):
        yield


@asynccontextmanager
async def ruleset_follower(app: FastAPI) -> AsyncIterator[None]:
    """Every process follows the ruleset versions the database says are active."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        follow_activations(app.state.registry, stop), name="leadscore-rulesets"
    )
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@asynccontextmanager
async def report_warmer(app: FastAPI) -> AsyncIterator[None]:
    """Keep the dashboard views in use computed (``service/report_cache.py``)."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        keep_warm(
            app.state.report_cache,
            app.state.read_session_factory,
            app.state.registry.snapshot,
            stop,
        ),
        name="leadscore-report-cache",
    )
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def create_app(
    settings: Settings | None = None, *, lifespan_hooks: Sequence[LifespanHook] = ()
) -> FastAPI:
    """Build the application; raises ``RuleFileError``/``RegistryError`` on unusable rules."""
    settings = settings or get_settings()
    logs.route_to_stdlib()
    registry = RulesetRegistry.load(settings)
    engine = make_engine(settings.database_url)
    checkpointer = WalCheckpointer.for_engine(engine)
    session_factory = make_session_factory(engine)
    read_session_factory = make_session_factory(engine, read_only=True)
    metrics = Metrics()
    ingest_writer = GroupCommitter(
        session_factory,
        registry,
        writers=settings.writer_threads(),
        max_group_events=settings.ingest_group_events,
    )

    rate_limits = rate_limits_for(settings)

    hooks: list[LifespanHook] = [
        *lifespan_hooks,
        ruleset_follower,
        report_warmer,
        delivery_loops,
    ]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if checkpointer is not None:
            checkpointer.start()
        await run_in_threadpool(start_following, session_factory, registry, settings)
        directory = directory_file_for(settings)
        if directory is not None:
            await run_in_threadpool(sync_directory, session_factory, directory)
        if settings.crm_file is not None:
            await run_in_threadpool(apply_file, session_factory, settings)
        async with AsyncExitStack() as stack:
            for hook in hooks:
                await stack.enter_async_context(hook(app))
            app.state.started = True
            try:
                yield
            finally:
                app.state.started = False
        await run_in_threadpool(ingest_writer.close)
        if rate_limits is not None:
            await rate_limits.aclose()
        if checkpointer is not None:
            await run_in_threadpool(checkpointer.stop)
        engine.dispose()

    app = FastAPI(
        title="leadscore",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.checkpointer = checkpointer
    app.state.session_factory = session_factory
    app.state.read_session_factory = read_session_factory
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.ingest_writer = ingest_writer
    metrics.watch_outbox(lambda: delivery.queue_stats(read_session_factory))
    metrics.watch_group_commit(lambda: (ingest_writer.groups, ingest_writer.grouped_requests))
    app.state.key_cache = PrincipalCache(settings.api_key_cache_seconds)
    app.state.rate_limits = rate_limits
    app.state.report_cache = ReportCache(settings.dashboard_cache_seconds)
    app.state.started = False

    install_problem_handlers(app)
    # Inside the body limit, so that it reads a body already limited.
    app.add_middleware(InputGuardMiddleware, per_item_prefixes=PER_ITEM_PATHS)
    app.add_middleware(
        BodyLimitMiddleware,
        limit=settings.max_body_bytes,
        path_limits={"/v1/leads/import": settings.max_import_bytes},
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    # Outermost: every answer, a 413 from the body limit too, carries its request id.
    app.add_middleware(RequestContextMiddleware, access_log=settings.access_log)

    for router in ROUTERS:
        app.include_router(router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (CanonicalEvent, ProblemDetail):
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(model_schema.pop("$defs", {}))
            schemas[model.__name__] = model_schema
        document_problems(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
