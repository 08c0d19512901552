"""``/v1/rulesets``: the rulesets this service scores with."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel

from leadscore_api.api.deps import RegistryDep, RulesAdmin
from leadscore_api.api.problems import Problem, problem_responses
from leadscore_api.scoring import LoadedRuleset
from leadscore_api.service.ingest import iso
from leadscore_api.service.registry import RulesetRegistry

router = APIRouter(tags=["rulesets"])


class RulesetOut(BaseModel):
    name: str
    version: int
    sha256: str
    primary: bool
    activated_at: datetime | None


class RulesetDetail(RulesetOut):
    content: str


class RulesetList(BaseModel):
    items: list[RulesetOut]


def _describe(registry: RulesetRegistry, loaded: LoadedRuleset) -> dict[str, Any]:
    return {
        "name": loaded.name,
        "version": loaded.version,
        "sha256": loaded.sha256,
        "primary": loaded.name == registry.primary_name,
        "activated_at": iso(registry.activated_at.get(loaded.name)),
    }


@router.get(
    "/v1/rulesets",
    response_model=RulesetList,
    summary="Loaded rulesets",
    responses=problem_responses(401, 403),
)
def list_rulesets(_principal: RulesAdmin, registry: RegistryDep) -> dict[str, Any]:
    return {"items": [_describe(registry, loaded) for loaded in registry.ordered()]}


@router.get(
    "/v1/rulesets/{name}",
    response_model=RulesetDetail,
    summary="One loaded ruleset, with its text",
    responses=problem_responses(401, 403, 404),
)
def get_ruleset(
    _principal: RulesAdmin,
    registry: RegistryDep,
    name: Annotated[str, Path(max_length=100)],
) -> dict[str, Any]:
    loaded = registry.rulesets.get(name)
    if loaded is None:
        raise Problem(404, f"no loaded ruleset named {name!r}", slug="ruleset-not-found")
    return {**_describe(registry, loaded), "content": loaded.content}
