"""Reading ruleset files: YAML with line numbers, validation, and errors a rule author can act on.

Every problem is reported as ``FILE:LINE: message`` — never a traceback — because the people
editing these files are operations engineers, not the authors of this code.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from leadscore_api.scoring.checks import check_ruleset
from leadscore_api.scoring.model import CONDITION_TAGS, Ruleset, RuleTest

if TYPE_CHECKING:
    from leadscore_api.scoring.engine import Scorer

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class RuleFileError(Exception):
    """One or more problems in rule files; ``str()`` lists them one per line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass
class LoadedRuleset:
    name: str
    version: int
    sha256: str
    content: str
    path: str
    ruleset: Ruleset
    _scorer: Scorer | None = field(default=None, repr=False)

    @property
    def scorer(self) -> Scorer:
        if self._scorer is None:
            from leadscore_api.scoring.engine import Scorer

            self._scorer = Scorer(self.ruleset)
        return self._scorer


class _LineLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys, which plain YAML silently overwrites."""


def _construct_mapping(
    loader: _LineLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first at line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# Timestamps stay strings (the models parse them, with clearer messages than PyYAML's), and
# only true/false are booleans: YAML 1.1 would read the key `on:` of an action as True.
_LineLoader.yaml_implicit_resolvers = {
    key: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:bool")
    ]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _first in "tTfF":
    _LineLoader.yaml_implicit_resolvers.setdefault(_first, []).insert(
        0, ("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"))
    )


def _line_of(root: yaml.Node | None, loc: Loc) -> int:
    """The 1-based line of the deepest node of ``loc`` found in the YAML tree.

    Pydantic locations contain union tags and model names that are not keys in the file;
    those are skipped rather than ending the walk.
    """
    if root is None:
        return 1
    node: yaml.Node = root
    line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if (
                    key_node.value == part
                    or (part == "not_" and key_node.value == "not")
                    or (part == "in_" and key_node.value == "in")
                    or (part == "from_" and key_node.value == "from")
                ):
                    node = value_node
                    line = key_node.start_mark.line + 1
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            node = node.value[part]
            line = node.start_mark.line + 1
    return line


def _is_union_tag(loc: Loc, i: int) -> bool:
    """Whether ``loc[i]`` is a union tag rather than a key written in the file."""
    part = loc[i]
    if not isinstance(part, str) or part not in _UNION_TAGS or i == 0:
        return False
    before = loc[i - 1]
    if before in ("when", "requires", "where", "not", "not_"):
        return True
    return isinstance(before, int) and i >= 2 and loc[i - 2] in ("all", "any", "of")


def _dotted(loc: Loc, *, tags_removed: bool = False) -> str:
    text = ""
    for i, part in enumerate(loc):
        if not tags_removed and _is_union_tag(loc, i):
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.endswith("Condition") or part.startswith("function-"):
            continue
        else:
            name = {"not_": "not", "in_": "in", "from_": "from"}.get(part, part)
            text += f".{name}" if text else name
    return text


_UNION_TAGS = frozenset(CONDITION_TAGS)


def _message(error: Any) -> tuple[Loc, str]:
    loc: Loc = tuple(error["loc"])
    kind = error["type"]
    msg: str = error["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    # Drop the tags pydantic inserts for the discriminated condition union.
    clean = [part for i, part in enumerate(loc) if not _is_union_tag(loc, i)]
    if kind == "extra_forbidden":
        where = _dotted(tuple(clean[:-1]), tags_removed=True)
        return tuple(clean), f"{where + ': ' if where else ''}unknown field {clean[-1]!r}"
    if kind == "missing":
        where = _dotted(tuple(clean[:-1]), tags_removed=True)
        return tuple(clean), f"{where + ': ' if where else ''}missing required field {clean[-1]!r}"
    where = _dotted(tuple(clean), tags_removed=True)
    shown = error.get("input")
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "literal_error":
        msg = f"{msg} (got {shown!r})"
    return tuple(clean), f"{where + ': ' if where else ''}{msg}"


def parse_yaml(text: str, filename: str) -> tuple[Any, yaml.Node | None]:
    try:
        root = yaml.compose(text, Loader=_LineLoader)
        data = yaml.load(text, Loader=_LineLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        what = exc.problem or "invalid YAML"
        raise RuleFileError([Problem(filename, line, f"invalid YAML: {what}")]) from None
    except yaml.YAMLError as exc:
        raise RuleFileError([Problem(filename, 1, f"invalid YAML: {exc}")]) from None
    return data, root


def load_ruleset_text(text: str, filename: str = "<text>") -> LoadedRuleset:
    data, root = parse_yaml(text, filename)
    if not isinstance(data, dict):
        raise RuleFileError(
            [
                Problem(
                    filename,
                    1,
                    "a ruleset file must be a mapping with ruleset, version and components",
                )
            ]
        )
    try:
        ruleset = Ruleset.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            _, message = _message(error)
            problems.append(Problem(filename, _line_of(root, tuple(error["loc"])), message))
        raise RuleFileError(_unique(problems)) from None
    semantic = check_ruleset(ruleset)
    if semantic:
        raise RuleFileError(
            [
                Problem(filename, _line_of(root, path), f"{_dotted(path)}: {message}")
                for path, message in semantic
            ]
        )
    return LoadedRuleset(
        name=ruleset.ruleset,
        version=ruleset.version,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        content=text,
        path=filename,
        ruleset=ruleset,
    )


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: set[str] = set()
    out = []
    for problem in problems:
        if str(problem) not in seen:
            seen.add(str(problem))
            out.append(problem)
    return out


def load_ruleset_file(path: str | Path) -> LoadedRuleset:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleFileError([Problem(str(path), 1, f"cannot read the file: {exc}")]) from None
    return load_ruleset_text(text, str(path))


def ruleset_files(paths: Iterable[str | Path]) -> list[Path]:
    """Ruleset files named directly or found at the top of the folders named (tests/ is apart)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(
                sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
            )
        else:
            files.append(path)
    return files


def load_rules_dir(directory: str | Path) -> dict[str, LoadedRuleset]:
    """Every ruleset in a folder; all problems of all files are reported together."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RuleFileError([Problem(str(directory), 1, "the rules folder does not exist")])
    return load_ruleset_paths([directory])


def load_ruleset_paths(paths: Iterable[str | Path]) -> dict[str, LoadedRuleset]:
    loaded: dict[str, LoadedRuleset] = {}
    problems: list[Problem] = []
    files = ruleset_files(paths)
    if not files:
        raise RuleFileError(
            [Problem(", ".join(str(p) for p in paths), 1, "no ruleset files (*.yaml) found")]
        )
    for file in files:
        try:
            ruleset = load_ruleset_file(file)
        except RuleFileError as exc:
            problems.extend(exc.problems)
            continue
        if ruleset.name in loaded:
            problems.append(
                Problem(
                    str(file),
                    1,
                    f"ruleset {ruleset.name!r} is also defined in {loaded[ruleset.name].path}",
                )
            )
            continue
        loaded[ruleset.name] = ruleset
    if problems:
        raise RuleFileError(problems)
    return loaded


@dataclass(frozen=True)
class TestFile:
    __test__ = False

    path: str
    ruleset: str
    tests: list[RuleTest]


def load_test_files(directory: Path) -> list[TestFile]:
    """Rule tests kept apart from the rules, in ``<rules>/tests/*.yaml``."""
    folder = directory / "tests"
    if not folder.is_dir():
        return []
    files: list[TestFile] = []
    problems: list[Problem] = []
    for path in sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml")):
        text = path.read_text(encoding="utf-8")
        try:
            data, root = parse_yaml(text, str(path))
        except RuleFileError as exc:
            problems.extend(exc.problems)
            continue
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("ruleset"), str)
            or not isinstance(data.get("tests"), list)
        ):
            problems.append(
                Problem(str(path), 1, "a rule test file needs 'ruleset: NAME' and a list 'tests'")
            )
            continue
        unknown = set(data) - {"ruleset", "tests"}
        if unknown:
            problems.append(
                Problem(
                    str(path),
                    _line_of(root, (sorted(unknown)[0],)),
                    f"unknown field {sorted(unknown)[0]!r}",
                )
            )
            continue
        tests: list[RuleTest] = []
        for i, item in enumerate(data["tests"]):
            try:
                tests.append(RuleTest.model_validate(item))
            except ValidationError as exc:
                for error in exc.errors():
                    loc = ("tests", i, *error["loc"])
                    _, message = _message({**error, "loc": loc})
                    problems.append(Problem(str(path), _line_of(root, loc), message))
        files.append(TestFile(str(path), data["ruleset"], tests))
    if problems:
        raise RuleFileError(problems)
    return files
