"""Checks across a whole ruleset that single-field validation cannot make: references to
components and stages that do not exist, duplicate rule ids, matrix and band shapes.

Each problem carries the path inside the file so the loader can name the line.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from leadscore_api.scoring.model import (
    AllCondition,
    AnyCondition,
    AtLeastCondition,
    ComponentCondition,
    EventCondition,
    NotCondition,
    Operators,
    Ruleset,
    ScoreCondition,
)

Path = tuple[str | int, ...]


def walk_conditions(condition: Any, path: Path) -> Iterator[tuple[Any, Path]]:
    """Every condition nested in ``condition`` with its path in the file."""
    if condition is None or not isinstance(condition, BaseModel):
        return
    yield condition, path
    if isinstance(condition, AllCondition):
        for i, sub in enumerate(condition.all):
            yield from walk_conditions(sub, (*path, "all", i))
    elif isinstance(condition, AnyCondition):
        for i, sub in enumerate(condition.any):
            yield from walk_conditions(sub, (*path, "any", i))
    elif isinstance(condition, AtLeastCondition):
        for i, sub in enumerate(condition.of):
            yield from walk_conditions(sub, (*path, "of", i))
    elif isinstance(condition, NotCondition):
        yield from walk_conditions(condition.not_, (*path, "not"))
    elif isinstance(condition, EventCondition) and isinstance(condition.where, BaseModel):
        yield from walk_conditions(condition.where, (*path, "where"))


def _bounds(ops: Operators) -> list[float]:
    bounds = [b for b in (ops.gt, ops.gte, ops.lt, ops.lte) if b is not None]
    return bounds + list(ops.between or ())


def ruleset_conditions(ruleset: Ruleset) -> Iterator[tuple[Any, Path, str]]:
    """Every top-level condition of the ruleset, with its path and the context it runs in."""
    for name, component in ruleset.components.items():
        for i, criterion in enumerate(component.criteria):
            yield criterion.when, ("components", name, "criteria", i, "when"), "criterion"
        for i, action in enumerate(component.actions):
            if action.when is not None:
                yield action.when, ("components", name, "actions", i, "when"), "action"
        if component.requires is not None:
            yield component.requires, ("components", name, "requires"), "gate"
    for name, stage in ruleset.stages.items():
        yield stage.when, ("stages", name), "stage"
    for i, rule in enumerate(ruleset.routing):
        yield rule.when, ("routing", i, "when"), "routing"


def check_ruleset(ruleset: Ruleset) -> list[tuple[Path, str]]:
    problems: list[tuple[Path, str]] = []
    components = ruleset.components
    seen_ids: dict[str, Path] = {}
    for name, component in components.items():
        for kind in ("criteria", "actions"):
            for i, rule in enumerate(getattr(component, kind)):
                path: Path = ("components", name, kind, i, "id")
                if rule.id in seen_ids:
                    problems.append(
                        (path, f"duplicate rule id {rule.id!r}: ids must be unique in a ruleset")
                    )
                seen_ids[rule.id] = path
        if not component.criteria and not component.actions:
            problems.append(
                (("components", name), f"component {name!r} has no criteria and no actions")
            )

    for condition, path, context in ruleset_conditions(ruleset):
        for sub, sub_path in walk_conditions(condition, path):
            if isinstance(sub, ScoreCondition):
                problems.extend(
                    (sub_path, f"score threshold {bound:g} is outside 0–100")
                    for bound in _bounds(sub.score)
                    if not 0 <= bound <= 100
                )
            if isinstance(sub, ComponentCondition) and sub.component not in components:
                problems.append(
                    (
                        sub_path,
                        f"refers to unknown component {sub.component!r} (known: {', '.join(components)})",
                    )
                )
            if (
                context in ("criterion", "gate", "routing")
                and type(sub).__name__ == "PropertyCondition"
            ):
                problems.append(
                    (
                        sub_path,
                        "an event property can only be tested in an action's 'when' or an event condition's 'where'",
                    )
                )
            if context == "criterion" and type(sub).__name__ in (
                "ScoreCondition",
                "EventCondition",
                "ComponentCondition",
            ):
                problems.append((sub_path, "a fit criterion can only test lead attributes (field)"))
            if context == "action" and type(sub).__name__ not in (
                "FieldCondition",
                "PropertyCondition",
                "AllCondition",
                "AnyCondition",
                "NotCondition",
                "AtLeastCondition",
            ):
                problems.append(
                    (
                        sub_path,
                        "an action's 'when' can only test event properties and lead attributes",
                    )
                )
    for name, component in components.items():
        if component.requires is not None:
            for sub, sub_path in walk_conditions(
                component.requires, ("components", name, "requires")
            ):
                if isinstance(sub, ComponentCondition) and sub.component == name:
                    problems.append((sub_path, f"component {name!r} cannot be gated on itself"))
                if type(sub).__name__ in ("ScoreCondition", "LetterCondition", "TierCondition"):
                    problems.append(
                        (
                            sub_path,
                            "a gate can test components, attributes and events, not the score it feeds",
                        )
                    )

    if ruleset.letter is not None and ruleset.letter.from_ not in components:
        problems.append(
            (("letter", "from"), f"refers to unknown component {ruleset.letter.from_!r}")
        )
    if ruleset.matrix is not None:
        if ruleset.score_bands is None:
            problems.append((("matrix",), "a matrix needs score_bands"))
        else:
            for letter, row in ruleset.matrix.items():
                if len(row) != len(ruleset.score_bands):
                    problems.append(
                        (
                            ("matrix", letter),
                            f"row {letter} has {len(row)} actions for {len(ruleset.score_bands)} score bands",
                        )
                    )
        if ruleset.letter is None:
            problems.append((("matrix",), "a matrix needs a letter"))
    if ruleset.workflows is not None:
        for tier in ruleset.workflows:
            if ruleset.tiers is None or tier not in ruleset.tiers:
                problems.append((("workflows", tier), f"workflow for unknown tier {tier!r}"))
    stage_names = set(ruleset.stages) | {"lead"}
    for i, sla in enumerate(ruleset.sla):
        if sla.stage not in stage_names:
            problems.append((("sla", i, "stage"), f"refers to unknown stage {sla.stage!r}"))
    if ruleset.next_action_from == "matrix" and ruleset.matrix is None:
        problems.append(
            (("next_action_from",), "next_action_from is matrix but there is no matrix")
        )
    if ruleset.next_action_from == "workflow" and ruleset.workflows is None:
        problems.append(
            (("next_action_from",), "next_action_from is workflow but there are no workflows")
        )
    for i, test in enumerate(ruleset.tests):
        problems.extend(check_expectation(test.expect, ("tests", i, "expect")))
    return problems


EXPECTABLE = {
    "letter",
    "score",
    "tier",
    "stage",
    "components",
    "next_action",
    "owner",
    "stages_reached",
    "next_action_due",
}


def check_expectation(expect: dict[str, Any], path: Path) -> list[tuple[Path, str]]:
    return [
        ((*path, key), f"unknown expectation {key!r}; use: {', '.join(sorted(EXPECTABLE))}")
        for key in expect
        if key not in EXPECTABLE
    ]
