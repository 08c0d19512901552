"""Dependencies shared by the routers, as ``Annotated`` aliases.

The app keeps its collaborators on ``app.state`` (settings, session factories, rulesets,
metrics), so routers written by other subsystems reach them the same way.

Dependencies that do no I/O are ``async``: FastAPI runs a plain ``def`` dependency in a worker
thread, and a request to ``POST /v1/events`` paid five thread hops for attribute lookups.
Authentication is ``async`` too and goes to a thread only to look a stored key up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from leadscore_api.api.metrics import Metrics
from leadscore_api.api.rate_limits import RateLimits
from leadscore_api.config import Settings
from leadscore_api.errors import Forbidden, Unauthenticated
from leadscore_api.service.api_keys import (
    Principal,
    PrincipalCache,
    admin_principal,
    key_principal,
)
from leadscore_api.service.group_commit import GroupCommitter
from leadscore_api.service.rulesets import RulesetRegistry


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_registry(request: Request) -> RulesetRegistry:
    """The active rulesets, frozen for this request; the database is asked at most every
    ``LEADSCORE_RULESET_REFRESH_SECONDS`` (in a thread), never on most requests."""
    registry: RulesetRegistry = request.app.state.registry
    if registry.refresh_due():
        await run_in_threadpool(registry.refresh_if_due)
    return registry.snapshot()


async def get_live_registry(request: Request) -> RulesetRegistry:
    """The process's own registry, not a request's snapshot: the one to refresh after a
    switch of versions, so that this replica serves the new one at once."""
    registry: RulesetRegistry = request.app.state.registry
    return registry


async def get_session_factory(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.session_factory
    return factory


def get_read_session(request: Request) -> Iterator[Session]:
    """A session for reads (on SQLite it does not take the write lock)."""
    factory: sessionmaker[Session] = request.app.state.read_session_factory
    with factory() as session:
        yield session


async def get_ingest_writer(request: Request) -> GroupCommitter:
    writer: GroupCommitter = request.app.state.ingest_writer
    return writer


async def get_key_cache(request: Request) -> PrincipalCache:
    cache: PrincipalCache = request.app.state.key_cache
    return cache


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[RulesetRegistry, Depends(get_registry)]
LiveRegistryDep = Annotated[RulesetRegistry, Depends(get_live_registry)]
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]
ReadSessionDep = Annotated[Session, Depends(get_read_session)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
IngestWriterDep = Annotated[GroupCommitter, Depends(get_ingest_writer)]
KeyCacheDep = Annotated[PrincipalCache, Depends(get_key_cache)]

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key: `Authorization: Bearer lsk_...` (or the bootstrap admin key).",
)

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _stored_key_principal(factory: sessionmaker[Session], presented: str) -> Principal | None:
    with factory() as session:
        return key_principal(session, presented)


class RequireScope:
    """Authenticate the caller and insist on one scope: 401 without a valid key, 403 without it."""

    def __init__(self, scope: str) -> None:
        self.scope = scope

    async def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        return await self.authorize(request, credentials.credentials if credentials else None)

    async def check(self, request: Request) -> Principal:
        """The same check, called by a route directly rather than as a dependency.

        ``POST /v1/events`` does this: FastAPI's dependency resolution for the key (two
        dependencies, one taking the request) was about a sixth of the HTTP thread's CPU per
        single event. The bearer token is read as ``HTTPBearer`` reads it; the route declares
        the security scheme in its OpenAPI operation itself (``EVENTS_SECURITY``).
        """
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        presented = token if scheme.lower() == "bearer" and token else None
        return await self.authorize(request, presented)

    async def authorize(self, request: Request, presented: str | None) -> Principal:
        if not presented:
            raise Unauthenticated(
                "send an API key as `Authorization: Bearer <key>`", headers=_CHALLENGE
            )
        state = request.app.state
        settings: Settings = state.settings
        principal = admin_principal(presented, settings.admin_api_key)
        cache: PrincipalCache = state.key_cache
        if principal is None:
            principal = cache.get(presented)
        if principal is None:
            factory: sessionmaker[Session] = state.read_session_factory
            principal = await run_in_threadpool(_stored_key_principal, factory, presented)
            if principal is not None:
                cache.put(presented, principal)
        if principal is None:
            raise Unauthenticated(
                "the API key is not valid (unknown, malformed or revoked)",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        if not principal.has(self.scope):
            raise Forbidden(f"this API key lacks the scope {self.scope!r}")
        limits: RateLimits | None = getattr(state, "rate_limits", None)
        if limits is not None:
            await limits.check_key(principal.key_id)
        request.state.principal = principal
        return principal


#: The OpenAPI ``security`` of an operation that calls ``RequireScope.check`` itself.
ENDPOINT_SECURITY: list[dict[str, list[str]]] = [{_bearer.scheme_name: []}]
#: The attribute naming the scope a route checks itself (``checks_scope``).
CHECKED_SCOPE_ATTRIBUTE = "leadscore_checked_scope"

_Endpoint = TypeVar("_Endpoint", bound=Callable[..., Any])


def checks_scope(requirement: RequireScope) -> Callable[[_Endpoint], _Endpoint]:
    """Mark an endpoint that calls ``requirement.check`` itself, so that the access rules can
    be read from the code for every route alike (``tests/api/test_security.py``)."""

    def mark(endpoint: _Endpoint) -> _Endpoint:
        setattr(endpoint, CHECKED_SCOPE_ATTRIBUTE, requirement.scope)
        return endpoint

    return mark


EventsWriter = Annotated[Principal, Depends(RequireScope("events:write"))]
LeadsReader = Annotated[Principal, Depends(RequireScope("leads:read"))]
LeadsWriter = Annotated[Principal, Depends(RequireScope("leads:write"))]
RulesAdmin = Annotated[Principal, Depends(RequireScope("rules:admin"))]
KeysAdmin = Annotated[Principal, Depends(RequireScope("keys:admin"))]
RepsAdmin = Annotated[Principal, Depends(RequireScope("reps:admin"))]
