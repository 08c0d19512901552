"""The FastAPI application.

``create_app(settings)`` wires everything from one ``Settings`` object and keeps what routers
need on ``app.state``: ``settings``, ``engine``, ``session_factory`` (writes),
``read_session_factory`` (reads), ``checkpointer`` (SQLite's background WAL checkpoints, None
elsewhere), ``registry`` (the loaded rulesets) and ``metrics``.

Optional subsystems plug in without this module knowing them in advance:

* routers: ``leadscore_api.ingest.webhooks.router`` (inbound platform webhooks) and
  ``leadscore_api.delivery.api.router`` (subscriptions, deliveries) are included when those
  modules exist;
* background work: a module ``leadscore_api.delivery.lifespan`` defining
  ``lifespan(app) -> AsyncContextManager[None]`` is entered after start-up and left before
  shutdown (the delivery worker starts there when ``settings.run_worker``); callers can also
  pass their own hooks as ``create_app(settings, lifespan_hooks=[...])``.

The app does not migrate the database: ``leadscore serve`` does, once, before starting it, so
replicas starting together do not race on DDL.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.concurrency import run_in_threadpool

from leadscore_api import __version__
from leadscore_api.api import api_keys, events, health, leads, rulesets
from leadscore_api.api.metrics import Metrics
from leadscore_api.api.middleware import BodyLimitMiddleware, MetricsMiddleware
from leadscore_api.api.problems import ProblemDetail, install_problem_handlers
from leadscore_api.config import Settings, get_settings
from leadscore_api.ingest.events import CanonicalEvent
from leadscore_api.service.ingest import in_transaction
from leadscore_api.service.registry import RulesetRegistry, record_rulesets
from leadscore_api.storage.checkpoints import WalCheckpointer
from leadscore_api.storage.db import make_engine, make_session_factory

log = logging.getLogger("leadscore")

LifespanHook = Callable[[FastAPI], AbstractAsyncContextManager[None]]

OPTIONAL_ROUTERS = ("leadscore_api.ingest.webhooks", "leadscore_api.delivery.api")
OPTIONAL_LIFESPANS = ("leadscore_api.delivery.lifespan",)

DESCRIPTION = """Lead scoring for small and medium businesses: events in, scores, history and
transitions out. Authenticate with `Authorization: Bearer <api key>`; errors are
`application/problem+json` (RFC 9457)."""


def _optional_module(name: str) -> Any:
    if importlib.util.find_spec(name) is None:
        return None
    return importlib.import_module(name)


def create_app(
    settings: Settings | None = None, *, lifespan_hooks: Sequence[LifespanHook] = ()
) -> FastAPI:
    """Build the application; raises ``RuleFileError``/``RegistryError`` on unusable rules."""
    settings = settings or get_settings()
    registry = RulesetRegistry.load(settings)
    engine = make_engine(settings.database_url)
    checkpointer = WalCheckpointer.for_engine(engine)
    session_factory = make_session_factory(engine)
    read_session_factory = make_session_factory(engine, read_only=True)
    metrics = Metrics()

    hooks: list[LifespanHook] = list(lifespan_hooks)
    for module_name in OPTIONAL_LIFESPANS:
        module = _optional_module(module_name)
        hook = getattr(module, "lifespan", None) if module is not None else None
        if hook is not None:
            hooks.append(hook)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if checkpointer is not None:
            checkpointer.start()
        await run_in_threadpool(
            in_transaction, session_factory, lambda session: record_rulesets(session, registry)
        )
        async with AsyncExitStack() as stack:
            for hook in hooks:
                await stack.enter_async_context(hook(app))
            app.state.started = True
            try:
                yield
            finally:
                app.state.started = False
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
    app.state.started = False

    install_problem_handlers(app)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    for router_module in (health, events, leads, rulesets, api_keys):
        app.include_router(router_module.router)
    for module_name in OPTIONAL_ROUTERS:
        module = _optional_module(module_name)
        router = getattr(module, "router", None) if module is not None else None
        if router is not None:
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
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
