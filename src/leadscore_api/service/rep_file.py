"""The rep directory file (``rules/directory/reps.yaml``): its format and its validation.

The file is read like a ruleset file (the same YAML loader, which refuses duplicate keys and
keeps ``on``/``yes`` as strings), and every problem is reported as ``FILE:LINE: message``, all
of them at once, because the people editing it are the same operations engineers. The format
is described in ``docs/routing.md``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from leadscore_api.scoring.loader import (
    Loc,
    Problem,
    RuleFileError,
    _line_of,
    _message,
    parse_yaml,
)
from leadscore_api.storage.directory_models import DIRECTORY_WIDE

#: Where the directory file lives inside a rules folder. Not at the top of the folder: every
#: ``*.yaml`` there is read as a ruleset.
DIRECTORY_FILE = Path("directory") / "reps.yaml"

Strategy = Literal["round_robin", "least_open"]
#: Rep ids are chosen by people and stored as lead owners: short, no spaces.
REP_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
#: A team is a routing rule's ``owner``; ``*`` is reserved for the directory-wide strategy.
TEAM_PATTERN = r"^[^*\s][^*]*$"
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
MAX_TAGS = 100
MAX_EMPLOYEES = 10_000_000
MAX_CAPACITY = 1_000_000


def _matching(pattern: str, message: str) -> Callable[[str], str]:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.match(value):
            raise ValueError(message)
        return value

    return check


RepId = Annotated[
    str,
    Field(min_length=1, max_length=40),
    AfterValidator(
        _matching(
            REP_ID_PATTERN,
            "use letters, digits, '.', '_' and '-', starting with a letter or a digit",
        )
    ),
]
TeamName = Annotated[
    str,
    Field(min_length=1, max_length=200),
    AfterValidator(_matching(TEAM_PATTERN, "a team name has no '*' and starts with no space")),
]
EmailText = Annotated[
    str, Field(max_length=320), AfterValidator(_matching(EMAIL_PATTERN, "is not an email address"))
]
Tag = Annotated[str, Field(min_length=1, max_length=100)]


class DirectoryFileError(RuleFileError):
    """Problems in the directory file, one ``FILE:LINE: message`` per line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class RepEntry(_Strict):
    """One rep of the file."""

    id: RepId = Field(description="Stays the same for the rep's whole life: leads store it.")
    name: str = Field(min_length=1, max_length=200)
    email: EmailText | None = None
    team: TeamName = Field(description="A routing rule's `owner`, e.g. north-team.")
    industries: list[Tag] = Field(
        default_factory=list, max_length=MAX_TAGS, description="Expertise; empty: any industry."
    )
    regions: list[Tag] = Field(
        default_factory=list, max_length=MAX_TAGS, description="Covered regions; empty: any."
    )
    min_employees: int = Field(default=0, ge=0, le=MAX_EMPLOYEES)
    max_employees: int | None = Field(default=None, ge=0, le=MAX_EMPLOYEES)
    capacity: int | None = Field(
        default=None, ge=0, le=MAX_CAPACITY, description="Open leads at once; empty: unlimited."
    )
    active: bool = True

    @model_validator(mode="after")
    def _size_range(self) -> RepEntry:
        if self.max_employees is not None and self.max_employees < self.min_employees:
            raise ValueError(
                f"max_employees ({self.max_employees}) is below min_employees"
                f" ({self.min_employees})"
            )
        return self


class TeamEntry(_Strict):
    strategy: Strategy


class DirectoryFile(_Strict):
    """The whole file: a directory-wide strategy, per-team strategies, the reps."""

    strategy: Strategy = Field(
        default="round_robin", description="How teams without their own strategy hand out leads."
    )
    teams: dict[TeamName, TeamEntry] = Field(default_factory=dict)
    reps: list[RepEntry] = Field(default_factory=list)

    def strategies(self) -> dict[str, str]:
        """Team → strategy, with the directory-wide one under ``*``."""
        return {
            DIRECTORY_WIDE: self.strategy,
            **{team: t.strategy for team, t in self.teams.items()},
        }

    def summary(self) -> str:
        teams = {rep.team for rep in self.reps}
        return f"{len(self.reps)} reps in {len(teams)} teams"


def _checks(directory: DirectoryFile) -> list[tuple[Loc, str]]:
    """What the models cannot see alone: ids used twice, ids that are also team names."""
    problems: list[tuple[Loc, str]] = []
    first: dict[str, int] = {}
    teams = {rep.team.casefold() for rep in directory.reps} | {
        team.casefold() for team in directory.teams
    }
    for i, rep in enumerate(directory.reps):
        if rep.id in first:
            problems.append(
                (("reps", i, "id"), f"reps[{i}].id: {rep.id!r} is also reps[{first[rep.id]}].id")
            )
        else:
            first[rep.id] = i
        if rep.id.casefold() in teams:
            problems.append(
                (
                    ("reps", i, "id"),
                    f"reps[{i}].id: {rep.id!r} is also a team name; a lead's owner would be"
                    " ambiguous",
                )
            )
    return problems


def load_directory_text(text: str, filename: str = "<text>") -> DirectoryFile:
    """The directory in ``text``, or :class:`DirectoryFileError` listing every problem."""
    try:
        data, root = parse_yaml(text, filename)
    except RuleFileError as exc:
        raise DirectoryFileError(exc.problems) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DirectoryFileError(
            [Problem(filename, 1, "a rep directory file must be a mapping with a list 'reps'")]
        )
    try:
        directory = DirectoryFile.model_validate(data)
    except ValidationError as exc:
        problems: list[Problem] = []
        for error in exc.errors():
            loc: Loc = tuple(error["loc"])
            _, message = _message(error)
            problem = Problem(filename, _line_of(root, loc), message)
            if problem not in problems:
                problems.append(problem)
        raise DirectoryFileError(problems) from None
    semantic = _checks(directory)
    if semantic:
        raise DirectoryFileError(
            [Problem(filename, _line_of(root, loc), message) for loc, message in semantic]
        )
    return directory


def load_directory_file(path: str | Path) -> DirectoryFile:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DirectoryFileError([Problem(str(path), 1, f"cannot read the file: {exc}")]) from None
    return load_directory_text(text, str(path))


def directory_file_in(rules_dir: str | Path) -> Path | None:
    """The directory file of a rules folder (``<rules>/directory/reps.yaml``), if there is one."""
    path = Path(rules_dir) / DIRECTORY_FILE
    return path if path.is_file() else None
