"""Liveness, readiness and Prometheus metrics (no authentication, as probes expect)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from leadscore_api.api.deps import MetricsDep
from leadscore_api.api.problems import problem_responses
from leadscore_api.errors import Unavailable
from leadscore_api.storage.db import database_problem

router = APIRouter(tags=["health"])


class NotReady(Unavailable):
    problem_type = "not-ready"
    title = "Not ready"


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    rulesets: dict[str, int]


@router.get("/healthz", response_model=Health, summary="The process is up")
async def healthz() -> Health:
    return Health(status="ok")


def _database_ok(request: Request) -> str | None:
    return database_problem(request.app.state.read_session_factory)


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="The database answers and the rulesets are loaded",
    responses=problem_responses(503),
)
async def readyz(request: Request) -> Readiness:
    registry = getattr(request.app.state, "registry", None)
    problems: list[str] = []
    if registry is None or not registry.rulesets:
        problems.append("no ruleset loaded")
    database_problem = await run_in_threadpool(_database_ok, request)
    if database_problem:
        problems.append(database_problem)
    if not getattr(request.app.state, "started", False):
        problems.append("still starting")
    if problems or registry is None:
        raise NotReady("; ".join(problems))
    versions = {name: loaded.version for name, loaded in registry.rulesets.items()}
    return Readiness(status="ready", rulesets=versions)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(metrics: MetricsDep) -> Response:
    # In a thread: the outbox gauges ask the database at scrape time.
    body = await run_in_threadpool(generate_latest, metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
