"""Conditions compiled to plain Python callables, so the hot path never touches Pydantic.

A compiled condition is a pair of functions over a context: ``test`` answers, ``describe``
says in words why (used only when a stage is reached or an explanation is asked for).
"""

from __future__ import annotations

import operator
import re
from bisect import bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from leadscore_api.scoring.durations import parse_duration
from leadscore_api.scoring.model import (
    AllCondition,
    AnyCondition,
    AtLeastCondition,
    ComponentCondition,
    EventCondition,
    FieldCondition,
    LetterCondition,
    NotCondition,
    Operators,
    PropertyCondition,
    ScoreCondition,
    TierCondition,
)

Predicate = Callable[[Any], bool]


@dataclass(slots=True)
class Context:
    """What a condition may look at; only the parts the caller has are filled in."""

    attributes: Mapping[str, Any]
    properties: Mapping[str, Any] = field(default_factory=dict)
    score: float = 0.0
    letter: str | None = None
    tier: str | None = None
    components: Mapping[str, float] = field(default_factory=dict)
    counts: Any = None  # LeadState-like: .event_count(index, now)
    now: float = 0.0


def _norm(value: Any) -> Any:
    if isinstance(value, str):
        return value.strip().casefold()
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip().replace(",", "."))
        except ValueError:
            return None
    return None


def compile_operators(ops: Operators) -> tuple[Predicate, str]:
    """A predicate over one value, and the operators in words."""
    checks: list[Predicate] = []
    words: list[str] = []
    missing_ok = False
    if ops.eq is not None:
        target = _norm(ops.eq)
        checks.append(lambda v: _norm(v) == target)
        words.append(f"= {ops.eq!r}")
    if ops.ne is not None:
        target_ne = _norm(ops.ne)
        checks.append(lambda v: _norm(v) != target_ne)
        words.append(f"≠ {ops.ne!r}")
        missing_ok = True
    if ops.in_ is not None:
        allowed = frozenset(_norm(v) for v in ops.in_)
        checks.append(lambda v: _norm(v) in allowed)
        words.append(f"in {list(ops.in_)}")
    if ops.not_in is not None:
        barred = frozenset(_norm(v) for v in ops.not_in)
        checks.append(lambda v: _norm(v) not in barred)
        words.append(f"not in {list(ops.not_in)}")
        missing_ok = True
    for name, symbol, compare in (
        ("gt", ">", operator.gt),
        ("gte", "≥", operator.ge),
        ("lt", "<", operator.lt),
        ("lte", "≤", operator.le),
    ):
        bound = getattr(ops, name)
        if bound is not None:
            checks.append(_numeric(compare, float(bound)))
            words.append(f"{symbol} {bound:g}")
    if ops.between is not None:
        low, high = ops.between
        checks.append(_numeric(lambda a, b: low <= a <= high, 0.0))
        words.append(f"between {low:g} and {high:g}")
    if ops.matches is not None:
        pattern = re.compile(ops.matches, re.IGNORECASE)
        checks.append(lambda v: pattern.search(str(v)) is not None)
        words.append(f"matches /{ops.matches}/")
    exists = ops.exists
    if exists is not None:
        words.append("is present" if exists else "is absent")

    only_negative = missing_ok and ops.eq is None and ops.in_ is None
    if len(checks) == 1 and exists is None:
        return _single_operator(checks[0], missing_ok, only_negative), " and ".join(words)

    def single(value: Any) -> bool:
        return all(check(value) for check in checks)

    def predicate(value: Any) -> bool:
        present = value is not None and value != "" and value != []
        if exists is not None and present != exists:
            return False
        if not checks:
            return True
        if not present:
            return missing_ok
        if isinstance(value, list | tuple | set):
            if only_negative:
                return all(single(item) for item in value)
            return any(single(item) for item in value)
        return single(value)

    return predicate, " and ".join(words)


def _numeric(compare: Callable[[float, float], bool], bound: float) -> Predicate:
    def check(value: Any) -> bool:
        if type(value) is int or type(value) is float:
            return compare(value, bound)
        number = _number(value)
        return number is not None and compare(number, bound)

    return check


def _single_operator(check: Predicate, missing_ok: bool, only_negative: bool) -> Predicate:
    """The common case of one operator, without the general case's bookkeeping (hot path)."""

    def predicate(value: Any) -> bool:
        if value is None or value == "":
            return missing_ok
        if isinstance(value, list | tuple | set):
            if not value:
                return missing_ok
            if only_negative:
                return all(check(item) for item in value)
            return any(check(item) for item in value)
        return check(value)

    return predicate


@dataclass
class CountSpec:
    """An event condition's counter, kept in the lead state under ``index``."""

    index: int
    types: frozenset[str]
    where: Compiled | None
    within: float | None
    distinct: str | None


@dataclass
class Compiled:
    test: Callable[[Context], bool]
    describe: Callable[[Context], str]


def compile_condition(condition: Any, counts: list[CountSpec]) -> Compiled:
    """Compile a condition model; event conditions register a counter in ``counts``.

    ``test`` is one generated function for the whole tree, with every leaf inlined: a rule is
    checked at every event and every evaluation, and the nested closures this replaces cost
    four or five Python calls per leaf. ``describe`` keeps the closures (it runs only when a
    stage is reached or an explanation is read), and so does the tree's ``test`` for its parts.
    """
    source = _Source()
    tree, expression = _compile(condition, counts, source)
    return Compiled(source.function(expression), tree.describe)


class _Source:
    """Python source for one condition's flat test, and the constants it refers to."""

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {
            "_SEQ": (list, tuple, set),
            "_INT_FLOAT": (int, float),
            "_number": _number,
        }
        self.helpers: list[str] = []
        self.serial = 0

    def name(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial}"

    def const(self, value: Any) -> str:
        name = self.name("k")
        self.namespace[name] = value
        return name

    def function(self, expression: str) -> Callable[[Context], bool]:
        code = "".join(self.helpers) + f"def test(ctx):\n    return {expression}\n"
        exec(compile(code, "<condition>", "exec"), self.namespace)
        test: Callable[[Context], bool] = self.namespace["test"]
        return test


def _compile(condition: Any, counts: list[CountSpec], source: _Source) -> tuple[Compiled, str]:
    """The closure form of ``condition`` (for ``describe``) and its flat test as an expression."""
    if isinstance(condition, AllCondition | AnyCondition):
        compiled = [
            _compile(c, counts, source)
            for c in (condition.all if isinstance(condition, AllCondition) else condition.any)
        ]
        parts = [tree for tree, _ in compiled]
        if isinstance(condition, AllCondition):
            expression = "(" + " and ".join(e for _, e in compiled) + ")" if compiled else "True"
            return Compiled(
                lambda ctx: all(p.test(ctx) for p in parts),
                lambda ctx: "all of (" + "; ".join(p.describe(ctx) for p in parts) + ")",
            ), expression
        expression = "(" + " or ".join(e for _, e in compiled) + ")" if compiled else "False"
        return Compiled(
            lambda ctx: any(p.test(ctx) for p in parts),
            lambda ctx: "any of (" + "; ".join(p.describe(ctx) for p in parts) + ")",
        ), expression
    if isinstance(condition, NotCondition):
        inner, inner_expression = _compile(condition.not_, counts, source)
        return Compiled(
            lambda ctx: not inner.test(ctx), lambda ctx: f"not ({inner.describe(ctx)})"
        ), f"(not {inner_expression})"
    if isinstance(condition, AtLeastCondition):
        compiled = [_compile(c, counts, source) for c in condition.of]
        parts = [tree for tree, _ in compiled]
        needed = condition.at_least

        def at_least(ctx: Context) -> bool:
            held = 0
            for part in parts:
                if part.test(ctx):
                    held += 1
                    if held >= needed:
                        return True
            return False

        def describe_at_least(ctx: Context) -> str:
            held = [p.describe(ctx) for p in parts if p.test(ctx)]
            return f"{len(held)} of {len(parts)} criteria hold (need {needed}): " + "; ".join(held)

        # Short-circuits like the closure: later parts are not looked at once enough hold.
        name = source.name("f")
        lines = [f"def {name}(ctx):", "    held = 0"]
        for _, part_expression in compiled:
            lines += [
                f"    if {part_expression}:",
                "        held += 1",
                f"        if held >= {needed!r}:",
                "            return True",
            ]
        lines.append("    return False\n")
        source.helpers.append("\n".join(lines))
        return Compiled(at_least, describe_at_least), f"{name}(ctx)"
    if isinstance(condition, FieldCondition):
        return _leaf(
            condition, _getter("attributes", condition.field), condition.field
        ), _leaf_expression(
            condition, f"ctx.attributes.get({source.const(condition.field)})", source
        )
    if isinstance(condition, PropertyCondition):
        return _leaf(
            condition, _getter("properties", condition.property), f"event {condition.property}"
        ), _leaf_expression(
            condition, f"ctx.properties.get({source.const(condition.property)})", source
        )
    if isinstance(condition, ComponentCondition):
        return _leaf(
            condition, _getter("components", condition.component, 0.0), condition.component
        ), _leaf_expression(
            condition, f"ctx.components.get({source.const(condition.component)}, 0.0)", source
        )
    if isinstance(condition, ScoreCondition):
        return _leaf(condition.score, lambda ctx: ctx.score, "score"), _leaf_expression(
            condition.score, "ctx.score", source
        )
    if isinstance(condition, LetterCondition):
        return _leaf(condition.letter, lambda ctx: ctx.letter, "letter"), _leaf_expression(
            condition.letter, "ctx.letter", source
        )
    if isinstance(condition, TierCondition):
        return _leaf(condition.tier, lambda ctx: ctx.tier, "tier"), _leaf_expression(
            condition.tier, "ctx.tier", source
        )
    if isinstance(condition, EventCondition):
        types = frozenset(
            [condition.event] if isinstance(condition.event, str) else condition.event
        )
        where = compile_condition(condition.where, counts) if condition.where is not None else None
        within = parse_duration(condition.within).seconds if condition.within is not None else None
        spec = CountSpec(len(counts), types, where, within, condition.distinct)
        counts.append(spec)
        count_ok, count_words = compile_operators(condition.count)
        label = "/".join(sorted(types)) + (f" ({where.describe(Context({}))})" if where else "")
        label += f" distinct {condition.distinct}" if condition.distinct else ""
        label += f" within {condition.within}" if condition.within else ""
        return Compiled(
            lambda ctx: count_ok(ctx.counts.event_count(spec, ctx.now)),
            lambda ctx: f"{label}: {ctx.counts.event_count(spec, ctx.now)} {count_words}",
        ), _leaf_expression(
            condition.count, f"ctx.counts.event_count({source.const(spec)}, ctx.now)", source
        )
    raise TypeError(f"not a condition: {condition!r}")


def _leaf_expression(ops: Operators, value: str, source: _Source) -> str:
    """One leaf as an inline expression over ``value`` (source text), with the semantics of
    :func:`compile_operators`: the common single-operator case is spelled out, anything else
    calls the general predicate once."""
    predicate, _ = compile_operators(ops)
    check = _inline_check(ops, source)
    if check is None:
        return f"{source.const(predicate)}({value})"
    missing_ok = ops.ne is not None or ops.not_in is not None
    v = source.name("v")
    # A list value goes to the predicate (any item, or all for a negative operator).
    return (
        f"({missing_ok!r} if (({v} := {value}) is None or {v} == '') else "
        f"({source.const(predicate)}({v}) if isinstance({v}, _SEQ) else {check(v)}))"
    )


def _inline_check(ops: Operators, source: _Source) -> Callable[[str], str] | None:
    """The check of a present scalar value, as source text, when ``ops`` is one operator."""
    set_ = [
        name
        for name in ("eq", "ne", "in_", "not_in", "gt", "gte", "lt", "lte", "between", "matches")
        if getattr(ops, name) is not None
    ]
    if len(set_) != 1 or ops.exists is not None:
        return None
    name = set_[0]
    if name in ("eq", "ne"):
        target = source.const(_norm(getattr(ops, name)))
        symbol = "==" if name == "eq" else "!="
        return lambda v: (
            f"(({v}.strip().casefold() if isinstance({v}, str) else {v}) {symbol} {target})"
        )
    if name in ("in_", "not_in"):
        values = source.const(frozenset(_norm(x) for x in getattr(ops, name)))
        symbol = "in" if name == "in_" else "not in"
        return lambda v: (
            f"(({v}.strip().casefold() if isinstance({v}, str) else {v}) {symbol} {values})"
        )
    if name == "matches":
        assert ops.matches is not None
        pattern = source.const(re.compile(ops.matches, re.IGNORECASE))
        return lambda v: f"({pattern}.search(str({v})) is not None)"
    if name == "between":
        assert ops.between is not None
        low, high = (source.const(x) for x in ops.between)
        n = source.name("n")
        return lambda v: (
            f"(({low} <= {v} <= {high}) if type({v}) in _INT_FLOAT else "
            f"(({n} := _number({v})) is not None and {low} <= {n} <= {high}))"
        )
    symbol = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[name]
    bound = source.const(float(getattr(ops, name)))
    n = source.name("n")
    return lambda v: (
        f"(({v} {symbol} {bound}) if type({v}) in _INT_FLOAT else "
        f"(({n} := _number({v})) is not None and {n} {symbol} {bound}))"
    )


def _getter(mapping: str, key: str, default: Any = None) -> Callable[[Context], Any]:
    def get(ctx: Context) -> Any:
        return getattr(ctx, mapping).get(key, default)

    return get


def _leaf(ops: Operators, get: Callable[[Context], Any], name: str) -> Compiled:
    predicate, words = compile_operators(ops)
    return Compiled(
        lambda ctx: predicate(get(ctx)),
        lambda ctx: f"{name} {_show(get(ctx))} {words}",
    )


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)


def count_in_window(times: list[float], now: float, within: float) -> int:
    """How many sorted ``times`` fall in (now - within, now]."""
    return bisect_right(times, now) - bisect_right(times, now - within)
