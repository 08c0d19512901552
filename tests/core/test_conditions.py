"""Every operator and combinator of the rule language, as a rule author would use them."""

from __future__ import annotations

from typing import Any

import pytest

from leadscore_api.scoring.conditions import Context, compile_condition, compile_operators
from leadscore_api.scoring.model import Criterion, FieldCondition


def holds(condition: dict[str, Any], **attributes: Any) -> bool:
    model = Criterion.model_validate({"id": "x", "points": 1, "when": condition}).when
    return compile_condition(model, []).test(Context(attributes))


@pytest.mark.parametrize(
    ("condition", "value", "expected"),
    [
        ({"eq": "CEO"}, "ceo ", True),
        ({"eq": "CEO"}, "CFO", False),
        ({"eq": 5}, 5, True),
        ({"eq": True}, True, True),
        ({"ne": "b2c"}, "B2C", False),
        ({"ne": "b2c"}, None, True),
        ({"in": ["IT", "Manifatturiero"]}, "manifatturiero", True),
        ({"in": ["IT"]}, "retail", False),
        ({"in": ["IT"]}, None, False),
        ({"not_in": ["retail"]}, "IT", True),
        ({"not_in": ["retail"]}, "Retail", False),
        ({"not_in": ["retail"]}, None, True),
        ({"gt": 50}, 51, True),
        ({"gt": 50}, 50, False),
        ({"gt": 50}, "1200", True),
        ({"gt": 50}, "many", False),
        ({"gte": 50}, 50, True),
        ({"lt": 10}, 9.5, True),
        ({"lt": 10}, 10, False),
        ({"lte": 10}, 10, True),
        ({"between": [25, 45]}, 25, True),
        ({"between": [25, 45]}, 45, True),
        ({"between": [25, 45]}, 46, False),
        ({"matches": "manager|responsabile"}, "Responsabile Acquisti", True),
        ({"matches": "^ceo$"}, "chief executive", False),
        ({"exists": True}, "x", True),
        ({"exists": True}, None, False),
        ({"exists": True}, "", False),
        ({"exists": False}, None, True),
        ({"gte": 10, "lt": 20}, 15, True),
        ({"gte": 10, "lt": 20}, 20, False),
    ],
)
def test_operator(condition: dict[str, Any], value: Any, expected: bool) -> None:
    assert holds({"field": "f", **condition}, f=value) is expected


def test_a_list_attribute_matches_when_any_item_does() -> None:
    assert holds({"field": "interests", "in": ["crm"]}, interests=["viaggi", "CRM"])
    assert not holds({"field": "interests", "in": ["crm"]}, interests=["viaggi"])


def test_a_negative_operator_on_a_list_needs_every_item() -> None:
    assert holds({"field": "interests", "not_in": ["sport"]}, interests=["crm", "viaggi"])
    assert not holds({"field": "interests", "not_in": ["sport"]}, interests=["crm", "sport"])


def test_combinators() -> None:
    big = {"field": "employees", "gt": 50}
    it = {"field": "industry", "eq": "IT"}
    assert holds({"all": [big, it]}, employees=60, industry="IT")
    assert not holds({"all": [big, it]}, employees=60, industry="retail")
    assert holds({"any": [big, it]}, employees=6, industry="it")
    assert not holds({"any": [big, it]}, employees=6, industry="retail")
    assert holds({"not": it}, industry="retail")
    assert not holds({"not": it}, industry="IT")


def test_at_least_n_of() -> None:
    criteria = [{"field": k, "eq": True} for k in ("a", "b", "c", "d")]
    condition = {"at_least": 3, "of": criteria}
    assert holds(condition, a=True, b=True, c=True)
    assert not holds(condition, a=True, b=True, d=False)


def test_describe_says_why() -> None:
    model = Criterion.model_validate(
        {"id": "x", "points": 1, "when": {"field": "employees", "gt": 50}}
    ).when
    text = compile_condition(model, []).describe(Context({"employees": 1200}))
    assert text == "employees 1200 > 50"


OPERATOR_SETS: list[dict[str, Any]] = [
    {"eq": "CEO"},
    {"eq": 5},
    {"eq": True},
    {"ne": "b2c"},
    {"in": ["IT", "manifatturiero", 3]},
    {"not_in": ["retail", "b2c"]},
    {"gt": 50},
    {"gte": 50},
    {"lt": 10.5},
    {"lte": 10},
    {"between": [25, 45]},
    {"matches": "\\b(ceo|manager)\\b"},
    {"exists": True},
    {"exists": False},
    {"gt": 1, "lt": 100},
    {"in": ["a", "b"], "exists": True},
]
VALUES: list[Any] = [
    None,
    "",
    " CEO ",
    "ceo",
    "Marketing Manager",
    "B2C",
    "b2b",
    "IT",
    3,
    5,
    5.0,
    50,
    51,
    "1200",
    "1.200,5",
    "many",
    10,
    10.5,
    25,
    45,
    46,
    True,
    False,
    [],
    ["sport", "ceo"],
    ["b2c"],
    ("IT",),
    {"retail"},
    [None],
    [50, 51],
    0,
]


@pytest.mark.parametrize("operators", OPERATOR_SETS)
def test_the_flat_test_of_a_leaf_agrees_with_its_operators(operators: dict[str, Any]) -> None:
    """A field condition's generated test gives what the operators' own predicate (the
    reference semantics) gives, for every kind of value a lead may carry."""
    model = Criterion.model_validate(
        {"id": "x", "points": 1, "when": {"field": "v", **operators}}
    ).when
    assert isinstance(model, FieldCondition)
    reference, _ = compile_operators(model)
    compiled = compile_condition(model, [])
    for value in VALUES:
        assert compiled.test(Context({"v": value})) is reference(value), value
    assert compiled.test(Context({})) is reference(None)


def test_at_least_stops_at_enough_parts_like_the_rule_says() -> None:
    """``at_least`` with a later part that cannot be checked on this value (a list inside a
    list is not comparable) holds as soon as enough earlier parts hold."""
    condition = {
        "at_least": 2,
        "of": [{"field": "a", "eq": 1}, {"field": "b", "eq": 2}, {"field": "c", "in": ["x"]}],
    }
    assert holds(condition, a=1, b=2, c=[["unhashable"]])
    assert not holds(condition, a=1, b=3, c="y")
