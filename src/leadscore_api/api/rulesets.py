"""``/v1/rulesets``: the rulesets this service scores with."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel

from leadscore_api.api.deps import RegistryDep, RulesAdmin
from leadscore_api.api.problems import problem_responses
from leadscore_api.scoring import LoadedRuleset
from leadscore_api.service import rulesets as service
from leadscore_api.service.rulesets import RulesetRegistry

router = APIRouter(tags=["rulesets"])


class RulesetOut(BaseModel):
    name: str
    version: int
    sha256: str
    primary: bool
    activated_at: datetime | None

    @classmethod
    def of(cls, registry: RulesetRegistry, loaded: LoadedRuleset) -> RulesetOut:
        return cls(
            name=loaded.name,
            version=loaded.version,
            sha256=loaded.sha256,
            primary=loaded.name == registry.primary_name,
            activated_at=registry.activated_at.get(loaded.name),
        )


class RulesetDetail(RulesetOut):
    content: str


class RulesetList(BaseModel):
    items: list[RulesetOut]


@router.get(
    "/v1/rulesets",
    response_model=RulesetList,
    summary="Loaded rulesets",
    responses=problem_responses(401, 403),
)
def list_rulesets(_principal: RulesAdmin, registry: RegistryDep) -> RulesetList:
    return RulesetList(items=[RulesetOut.of(registry, loaded) for loaded in registry.ordered()])


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
) -> RulesetDetail:
    loaded = service.get_ruleset(registry, name)
    return RulesetDetail(**RulesetOut.of(registry, loaded).model_dump(), content=loaded.content)
