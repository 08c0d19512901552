"""The rule language: Pydantic models that a ruleset YAML file is validated against.

Structure and single values are checked here (unknown fields, unknown operators, wrong types,
values out of 0–100); references between parts of a file (a stage naming an unknown component,
duplicate rule ids) are checked in :mod:`leadscore_api.scoring.checks`, where the location of
each problem can be reported precisely.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from leadscore_api.scoring.durations import (
    DURATION_HELP,
    HOLIDAY_DAY_HELP,
    check_holiday_day,
    holiday_country,
    holiday_subdivision,
    parse_duration,
)

OPERATORS = ("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "between", "matches", "exists")
Scalar = str | int | float | bool
LETTERS = ("A", "B", "C", "D")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


def _check_duration(value: str | int | float) -> str | int | float:
    parse_duration(value)
    return value


DurationText = Annotated[
    str | int,
    Field(description=DURATION_HELP, examples=["30d", "24h", "90m", "4bh", "3bd"]),
]


class Operators(Strict):
    """Comparisons on one value. Several operators in one condition must all hold.

    Strings compare case-insensitively and trimmed, because rule authors write "CEO" and forms
    send "ceo "; ``matches`` is a case-insensitive regular expression searched in the value.
    A list value (interests) satisfies an operator when any of its items does.
    """

    eq: Scalar | None = None
    ne: Scalar | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in")
    not_in: list[Scalar] | None = None
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None
    between: tuple[float, float] | None = None
    matches: str | None = None
    exists: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_operators(cls, data: Any) -> Any:
        if isinstance(data, dict):
            reserved = {"field", "property", "component"}
            unknown = [k for k in data if k not in OPERATORS and k not in reserved]
            if unknown:
                raise ValueError(
                    f"unknown operator {unknown[0]!r}; use one of: {', '.join(OPERATORS)}"
                )
            if not any(k in OPERATORS for k in data):
                raise ValueError(f"needs an operator: one of {', '.join(OPERATORS)}")
        return data

    @field_validator("matches")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"is not a valid regular expression: {exc}") from exc
        return value

    @field_validator("between")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and value[0] > value[1]:
            raise ValueError("needs [low, high] with low <= high")
        return value


class FieldCondition(Operators):
    """A lead attribute (explicit data), e.g. ``{field: employees, gt: 50}``."""

    field: str = Field(min_length=1)


class PropertyCondition(Operators):
    """A property of the event being scored, e.g. ``{property: url, matches: /pricing}``."""

    property: str = Field(min_length=1)


class ComponentCondition(Operators):
    """A component's points, e.g. the seed's gate ``{component: fit, gte: 30}``."""

    component: str = Field(min_length=1)


class ScoreCondition(Strict):
    score: Operators


class LetterCondition(Strict):
    letter: Operators


class TierCondition(Strict):
    tier: Operators


class AllCondition(Strict):
    all: list[Condition] = Field(min_length=1)


class AnyCondition(Strict):
    any: list[Condition] = Field(min_length=1)


class NotCondition(Strict):
    not_: Condition = Field(alias="not")


class AtLeastCondition(Strict):
    """``at_least N of [...]``: the BANT hand-over's "at least 3 of 6 criteria"."""

    at_least: int = Field(ge=1)
    of: list[Condition] = Field(min_length=1)

    @model_validator(mode="after")
    def _reachable(self) -> AtLeastCondition:
        if self.at_least > len(self.of):
            raise ValueError(
                f"at_least {self.at_least} of {len(self.of)} conditions can never hold"
            )
        return self


class EventCondition(Strict):
    """Counts of the lead's events: ``{event: page.viewed, where: {url: {matches: pricing}},
    count: {gte: 2}, within: 30d}``. ``distinct`` counts different values of a property
    (e.g. different emails opened) instead of events."""

    event: str | list[str]
    where: Condition | dict[str, Operators] | None = None
    count: Operators = Field(default_factory=lambda: Operators(gte=1))
    within: DurationText | None = None
    distinct: str | None = None

    @field_validator("within")
    @classmethod
    def _calendar_within(cls, value: str | int | None) -> str | int | None:
        if value is None:
            return value
        _check_duration(value)
        if parse_duration(value).business:
            raise ValueError("a counting window is in calendar time: use m, h, d or w")
        return value

    @field_validator("where", mode="before")
    @classmethod
    def _where_shorthand(cls, value: Any) -> Any:
        keys = {"all", "any", "not", "at_least", "field", "property"}
        if isinstance(value, dict) and not (keys & value.keys()):
            return {
                "all": [
                    {"property": k, **v} if isinstance(v, dict) else {"property": k, "eq": v}
                    for k, v in value.items()
                ]
            }
        return value


#: The key that says which kind of condition a mapping is, in the order they are recognised.
CONDITION_TAGS = (
    "all",
    "any",
    "not",
    "at_least",
    "field",
    "property",
    "component",
    "score",
    "letter",
    "tier",
    "event",
)


def _condition_tag(value: Any) -> str | None:
    keys: Any
    if isinstance(value, dict):
        keys = value.keys()
    elif isinstance(value, BaseModel):
        keys = {f if f != "not_" else "not" for f in type(value).model_fields}
    else:
        return None
    for tag in CONDITION_TAGS:
        if tag in keys:
            return tag
    return None


Condition = Annotated[
    Annotated[AllCondition, Tag("all")]
    | Annotated[AnyCondition, Tag("any")]
    | Annotated[NotCondition, Tag("not")]
    | Annotated[AtLeastCondition, Tag("at_least")]
    | Annotated[FieldCondition, Tag("field")]
    | Annotated[PropertyCondition, Tag("property")]
    | Annotated[ComponentCondition, Tag("component")]
    | Annotated[ScoreCondition, Tag("score")]
    | Annotated[LetterCondition, Tag("letter")]
    | Annotated[TierCondition, Tag("tier")]
    | Annotated[EventCondition, Tag("event")],
    Discriminator(
        _condition_tag,
        custom_error_type="condition",
        custom_error_message=(
            "is not a condition: use one of field, property, component, score, letter, tier, "
            "event, all, any, not, at_least"
        ),
    ),
]


class Criterion(Strict):
    """Points for explicit data the lead has (fit)."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    points: float = Field(ge=-100, le=100)
    when: Condition
    description: str | None = None


class Limit(Strict):
    """Keep the first ``count`` matching events in each ``per`` window (calendar-aligned in the
    ruleset's time zone); without ``per`` the limit is for the lead's whole life."""

    count: int = Field(ge=1)
    per: DurationText | None = None

    @field_validator("per")
    @classmethod
    def _calendar_per(cls, value: str | int | None) -> str | int | None:
        if value is not None and parse_duration(value).business:
            raise ValueError("a limit window is counted in calendar time: use m, h, d or w")
        return value


class Action(Strict):
    """Points for something the lead did (behaviour)."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    on: str | list[str]
    when: Condition | None = None
    points: float = Field(ge=-100, le=100)
    limit: Limit | None = None
    description: str | None = None


class Decay(Strict):
    """How behaviour points fade: halve every ``half_life``, or vanish after ``expire_after``."""

    half_life: DurationText | None = None
    expire_after: DurationText | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Decay:
        if (self.half_life is None) == (self.expire_after is None):
            raise ValueError("decay needs exactly one of half_life or expire_after")
        for value in (self.half_life, self.expire_after):
            if value is not None and parse_duration(value).business:
                raise ValueError("decay is counted in calendar time: use m, h, d or w")
        return self


class Component(Strict):
    """One part of the score, clamped to [0, max]; optionally gated by ``requires``."""

    max: float = Field(gt=0, le=100)
    description: str | None = None
    criteria: list[Criterion] = Field(default_factory=list)
    actions: list[Action] = Field(default_factory=list)
    requires: Condition | None = None
    decay: Decay | None = None


class LetterSpec(Strict):
    """The fit letter: the band of a component's points (A highest)."""

    from_: str = Field(alias="from")
    bands: dict[Literal["A", "B", "C", "D"], float]

    @field_validator("bands")
    @classmethod
    def _bands(cls, value: dict[str, float]) -> dict[str, float]:
        for letter, threshold in value.items():
            if not 0 <= threshold <= 100:
                raise ValueError(f"band {letter} threshold {threshold} is outside 0–100")
        ordered = [value[letter] for letter in LETTERS if letter in value]
        if ordered != sorted(ordered, reverse=True):
            raise ValueError("bands must not increase from A to D")
        if min(ordered, default=1) != 0:
            raise ValueError("the lowest band must start at 0 so every lead gets a letter")
        return value


class StageSpec(Strict):
    when: Condition
    demote: bool = Field(
        default=False,
        description="Re-evaluate and leave the stage when its condition no longer holds.",
    )
    description: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_condition(cls, data: Any) -> Any:
        if isinstance(data, dict) and "when" not in data:
            return {"when": data}
        return data


class Workflow(Strict):
    """What to do with a lead of a tier, and by when (from the moment it entered the tier)."""

    action: str
    due: DurationText | None = None
    follow_up: str | None = Field(
        default=None, description="What the follow-up is (e.g. follow_up_call); default follow_up."
    )
    follow_up_within: DurationText | None = Field(
        default=None,
        description="One follow-up, due this long after entering the tier or the last contact.",
    )
    follow_up_every: DurationText | None = Field(
        default=None,
        description="Recurring follow-ups, every this long from entering the tier or the last contact.",
    )
    requalify_after: DurationText | None = None
    steps: list[str] = Field(default_factory=list)

    _v_durations = field_validator("due", "follow_up_within", "follow_up_every", "requalify_after")(
        _check_duration
    )

    @model_validator(mode="after")
    def _one_follow_up(self) -> Workflow:
        if self.follow_up_within is not None and self.follow_up_every is not None:
            raise ValueError("a workflow has follow_up_within or follow_up_every, not both")
        # The timer of a recurring follow-up moves itself on with a fixed step.
        if self.follow_up_every is not None and parse_duration(self.follow_up_every).business:
            raise ValueError(
                "follow_up_every is counted in calendar time: use m, h, d or w"
                " (follow_up_within may use working time)"
            )
        return self


class SlaRule(Strict):
    """A promise on a stage: e.g. sales confirms a hand-over within 4 working hours."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    stage: str
    within: DurationText
    met_by: list[str] = Field(min_length=1, description="Event types that keep the promise.")
    description: str | None = None

    _v_within = field_validator("within")(_check_duration)


class RoutingRule(Strict):
    when: Condition
    owner: str = Field(min_length=1)


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _office_week() -> list[Weekday]:
    return ["mon", "tue", "wed", "thu", "fri"]


class Holidays(Strict):
    """Days off besides the weekly ones: a country's public holidays (Italian national ones by
    default), optionally a subdivision's (a province's patron saint), plus days of your own."""

    country: str | None = Field(
        default="IT",
        description="ISO 3166-1 code of the country whose public holidays are days off "
        "(from the holidays library); null or none for no public holidays.",
        examples=["IT", None],
    )
    subdivision: str | None = Field(
        default=None,
        description="A subdivision of the country known to the holidays library, by code or "
        "name: its own holidays are days off too (e.g. MI: Sant'Ambrogio, 7 December).",
        examples=["MI", "RM"],
    )
    extra: list[Annotated[str, AfterValidator(check_holiday_day)]] = Field(
        default_factory=list,
        description=f"More days off, each {HOLIDAY_DAY_HELP}.",
        examples=[["12-07", "2026-12-24"]],
    )

    @field_validator("country")
    @classmethod
    def _country(cls, value: str | None) -> str | None:
        return holiday_country(value)

    @field_validator("subdivision")
    @classmethod
    def _subdivision(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or "country" not in info.data:  # a bad country is reported already
            return value
        country = info.data["country"]
        if country is None:
            raise ValueError("a subdivision needs a country (country is null)")
        return holiday_subdivision(country, value)


class Calendar(Strict):
    """Working time for ``bh``/``bd`` durations: weekly working days and hours, minus holidays."""

    working_days: list[Weekday] = Field(default_factory=_office_week, min_length=1)
    working_hours: tuple[str, str] = ("09:00", "18:00")
    holidays: Holidays = Field(default_factory=Holidays)

    @field_validator("working_hours")
    @classmethod
    def _hours(cls, value: tuple[str, str]) -> tuple[str, str]:
        pattern = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
        if not all(pattern.match(v) for v in value) or value[0] >= value[1]:
            raise ValueError('needs ["HH:MM", "HH:MM"] with the start before the end')
        return value


class TestEvent(Strict):
    type: str
    properties: dict[str, Any] = Field(default_factory=dict)
    attributes: dict[str, Any] = Field(default_factory=dict)
    at: str | None = Field(default=None, description="RFC 3339 time of the event.")
    ago: DurationText | None = Field(default=None, description="How long before as_of.")
    repeat: int = Field(default=1, ge=1, le=1000)
    every: DurationText = "1d"
    id: str | None = None


class RuleTest(Strict):
    __test__ = False  # not a pytest class

    name: str
    lead: dict[str, Any] = Field(default_factory=dict)
    events: list[TestEvent] = Field(default_factory=list)
    as_of: str | None = None
    expect: dict[str, Any]


class Ruleset(Strict):
    """One scoring model, versioned; everything about it lives in its file."""

    ruleset: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="The model's name.")
    version: int = Field(ge=1)
    description: str | None = None
    timezone: str = "Europe/Rome"
    calendar: Calendar = Field(default_factory=Calendar)
    components: dict[str, Component] = Field(min_length=1)
    letter: LetterSpec | None = None
    tiers: dict[str, float] | None = None
    stages: dict[str, StageSpec] = Field(default_factory=dict)
    score_bands: list[float] | None = None
    matrix: dict[Literal["A", "B", "C", "D"], list[str]] | None = None
    workflows: dict[str, Workflow] | None = None
    next_action_from: Literal["matrix", "workflow"] | None = None
    sla: list[SlaRule] = Field(default_factory=list)
    routing: list[RoutingRule] = Field(default_factory=list)
    default_owner: str | None = None
    tests: list[RuleTest] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (e.g. Europe/Rome)") from exc
        return value

    @field_validator("tiers")
    @classmethod
    def _tiers(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return None
        for name, threshold in value.items():
            if not 0 <= threshold <= 100:
                raise ValueError(f"tier {name} threshold {threshold} is outside 0–100")
        if 0 not in value.values():
            raise ValueError("the lowest tier must start at 0 so every lead gets a tier")
        return value

    @field_validator("stages")
    @classmethod
    def _stage_names(cls, value: dict[str, StageSpec]) -> dict[str, StageSpec]:
        for name in value:
            if name == "lead":
                raise ValueError("'lead' is the implicit first stage; do not define it")
            if not re.match(r"^[a-z][a-z0-9_]*$", name):
                raise ValueError(f"stage name {name!r} must be lower-case letters, digits, _")
        return value

    @field_validator("score_bands")
    @classmethod
    def _score_bands(cls, value: list[float] | None) -> list[float] | None:
        if value is None:
            return None
        if not value or value[0] != 0:
            raise ValueError("score bands must start at 0")
        if any(not 0 <= v <= 100 for v in value):
            raise ValueError("score bands must lie within 0–100")
        if value != sorted(set(value)):
            raise ValueError("score bands must increase")
        return value


_RECURSIVE: tuple[type[BaseModel], ...] = (
    AllCondition,
    AnyCondition,
    NotCondition,
    AtLeastCondition,
    EventCondition,
    Criterion,
    Action,
    Component,
    StageSpec,
    RoutingRule,
    Ruleset,
)
for _model in _RECURSIVE:
    _model.model_rebuild()
