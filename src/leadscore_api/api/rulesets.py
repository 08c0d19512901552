"""``/v1/rulesets``: the active rulesets, every stored version, and switching between them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from leadscore_api.api.deps import (
    LiveRegistryDep,
    ReadSessionDep,
    RegistryDep,
    RulesAdmin,
    SessionFactoryDep,
    SettingsDep,
)
from leadscore_api.api.jobs import EmitWebhooks, JobOut
from leadscore_api.api.problems import problem_responses
from leadscore_api.scoring import LoadedRuleset
from leadscore_api.service import lifecycle
from leadscore_api.service import rulesets as service
from leadscore_api.service.jobs import JobView
from leadscore_api.service.rulesets import RulesetRegistry, StoredVersion, Switch

router = APIRouter(tags=["rulesets"])

Name = Annotated[
    str,
    Path(
        min_length=1,
        max_length=100,
        pattern=r"^[a-z0-9][a-z0-9_-]*$",
        description="The ruleset's name (as rule files spell it).",
    ),
]
Version = Annotated[int, Path(ge=1, le=2_147_483_647, description="A stored version number.")]
Rescore = Annotated[
    bool,
    Query(description="Queue a re-score of every lead under the new version (a job)."),
]


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


class StoredVersionOut(BaseModel):
    name: str
    version: int
    sha256: str
    active: bool = Field(description="Whether this version is the one served now.")
    stored_at: datetime = Field(description="When the text was first stored.")
    activated_at: datetime | None = Field(description="When it was last switched on, if ever.")

    @classmethod
    def of(cls, stored: StoredVersion) -> StoredVersionOut:
        return cls(
            name=stored.record.name,
            version=stored.record.version,
            sha256=stored.record.sha256,
            active=stored.active,
            stored_at=stored.record.activated_at,
            activated_at=stored.activated_at,
        )


class StoredVersionDetail(StoredVersionOut):
    content: str


class StoredVersionList(BaseModel):
    items: list[StoredVersionOut]


class RulesetDiff(BaseModel):
    name: str
    from_version: int
    to_version: int
    diff: str = Field(description="A unified diff of the two YAML texts; empty when equal.")


class SwitchOut(BaseModel):
    name: str
    version: int = Field(description="The version active now.")
    sha256: str
    previous_version: int | None = Field(description="The version active before.")
    changed: bool = Field(description="False when the version was already active.")
    generation: int = Field(description="The activation counter replicas follow.")
    job: JobOut | None = Field(description="The re-score queued, when asked for.")

    @classmethod
    def of(cls, switch: Switch, job: JobView | None) -> SwitchOut:
        return cls(
            name=switch.name,
            version=switch.version,
            sha256=switch.sha256,
            previous_version=switch.previous_version,
            changed=switch.changed,
            generation=switch.generation,
            job=JobOut.of(job) if job is not None else None,
        )


class ReloadedFileOut(BaseModel):
    name: str
    version: int
    sha256: str
    path: str
    status: Literal["activated", "stored", "unchanged"] = Field(
        description="`activated`: a version seen for the first time, now active;"
        " `stored`: seen for the first time and only stored (`activate=false`);"
        " `unchanged`: already stored (a rollback is not undone by a reload)."
    )


class ReloadOut(BaseModel):
    files: list[ReloadedFileOut]
    generation: int
    job: JobOut | None


@router.get(
    "/v1/rulesets",
    response_model=RulesetList,
    summary="Active rulesets",
    responses=problem_responses(401, 403),
)
def list_rulesets(_principal: RulesAdmin, registry: RegistryDep) -> RulesetList:
    return RulesetList(items=[RulesetOut.of(registry, loaded) for loaded in registry.ordered()])


@router.post(
    "/v1/rulesets/reload",
    response_model=ReloadOut,
    summary="Load the rules folder again: store every file, activate new versions",
    description="A folder that does not validate is refused (422, `errors` name each"
    " `FILE:LINE`) and the active versions stay; a changed file that kept its version number"
    " is refused (409 naming the file). Other replicas follow within"
    " `LEADSCORE_RULESET_REFRESH_SECONDS`.",
    responses=problem_responses(401, 403, 409, 422),
)
def reload_rulesets(
    _principal: RulesAdmin,
    registry: LiveRegistryDep,
    factory: SessionFactoryDep,
    settings: SettingsDep,
    rescore: Rescore = False,
    emit_webhooks: EmitWebhooks = False,
    activate: Annotated[
        bool,
        Query(
            description="`false`: store new versions without serving them, to backtest them"
            " or run one as a challenger first (a ruleset with no active version is still"
            " activated)."
        ),
    ] = True,
) -> ReloadOut:
    report, job = lifecycle.reload(
        factory,
        registry,
        settings,
        lifecycle.Rescore(rescore, emit_webhooks),
        activate=activate,
    )
    return ReloadOut(
        files=[
            ReloadedFileOut(
                name=f.name, version=f.version, sha256=f.sha256, path=f.path, status=f.status
            )
            for f in report.files
        ],
        generation=report.generation,
        job=JobOut.of(job) if job is not None else None,
    )


@router.get(
    "/v1/rulesets/{name}",
    response_model=RulesetDetail,
    summary="One active ruleset, with its text",
    responses=problem_responses(401, 403, 404),
)
def get_ruleset(_principal: RulesAdmin, registry: RegistryDep, name: Name) -> RulesetDetail:
    loaded = service.get_ruleset(registry, name)
    return RulesetDetail(**RulesetOut.of(registry, loaded).model_dump(), content=loaded.content)


@router.get(
    "/v1/rulesets/{name}/versions",
    response_model=StoredVersionList,
    summary="Every stored version of a ruleset, oldest first",
    responses=problem_responses(401, 403, 404),
)
def list_versions(_principal: RulesAdmin, session: ReadSessionDep, name: Name) -> StoredVersionList:
    return StoredVersionList(
        items=[StoredVersionOut.of(s) for s in service.list_versions(session, name)]
    )


@router.get(
    "/v1/rulesets/{name}/versions/{version}",
    response_model=StoredVersionDetail,
    summary="One stored version of a ruleset, with its text",
    responses=problem_responses(401, 403, 404, 422),
)
def get_version(
    _principal: RulesAdmin, session: ReadSessionDep, name: Name, version: Version
) -> StoredVersionDetail:
    stored = service.get_version(session, name, version)
    return StoredVersionDetail(
        **StoredVersionOut.of(stored).model_dump(), content=stored.record.content
    )


@router.get(
    "/v1/rulesets/{name}/diff",
    response_model=RulesetDiff,
    summary="A unified diff of two stored versions' YAML",
    responses=problem_responses(401, 403, 404, 422),
)
def diff_versions(
    _principal: RulesAdmin,
    session: ReadSessionDep,
    name: Name,
    from_version: Annotated[int, Query(alias="from", ge=1, le=2_147_483_647)],
    to_version: Annotated[int, Query(alias="to", ge=1, le=2_147_483_647)],
) -> RulesetDiff:
    text = service.diff_versions(session, name, from_version, to_version)
    return RulesetDiff(name=name, from_version=from_version, to_version=to_version, diff=text)


@router.post(
    "/v1/rulesets/{name}/activate",
    response_model=SwitchOut,
    summary="Serve a stored version of a ruleset, on every replica",
    responses=problem_responses(401, 403, 404, 422),
)
def activate(
    _principal: RulesAdmin,
    registry: LiveRegistryDep,
    factory: SessionFactoryDep,
    name: Name,
    version: Annotated[int, Query(ge=1, le=2_147_483_647, description="The version to serve.")],
    rescore: Rescore = False,
    emit_webhooks: EmitWebhooks = False,
) -> SwitchOut:
    switch, job = lifecycle.activate(
        factory, registry, name, version, lifecycle.Rescore(rescore, emit_webhooks)
    )
    return SwitchOut.of(switch, job)


@router.post(
    "/v1/rulesets/{name}/rollback",
    response_model=SwitchOut,
    summary="Serve the version that was active before the current one",
    description="Repeated rollbacks walk back through the activation history; 409 when the"
    " current version is the first one.",
    responses=problem_responses(401, 403, 404, 409, 422),
)
def rollback(
    _principal: RulesAdmin,
    registry: LiveRegistryDep,
    factory: SessionFactoryDep,
    name: Name,
    rescore: Rescore = False,
    emit_webhooks: EmitWebhooks = False,
) -> SwitchOut:
    switch, job = lifecycle.rollback(
        factory, registry, name, lifecycle.Rescore(rescore, emit_webhooks)
    )
    return SwitchOut.of(switch, job)
