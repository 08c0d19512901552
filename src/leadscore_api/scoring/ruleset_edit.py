"""Writing a ruleset file with new points per rule, keeping the author's comments and layout.

Calibration suggests points; the engineer reviews the result as a diff of their own file, so
the text is edited in place (each rule's ``points:``, the ``version:``, a comment header)
rather than dumped again from the parsed YAML, which would drop comments and anchors. The
result is loaded again and compared with what was asked: a file that does not say exactly the
suggested points is never returned.
"""

from __future__ import annotations

import re

from leadscore_api.scoring.loader import Problem, RuleFileError, load_ruleset_text

_ID_LINE = re.compile(r"^(?P<indent>\s*)-\s+id:\s*(?P<q>['\"]?)(?P<id>[^'\"\s#]+)(?P=q)\s*(#.*)?$")
_FLOW_ITEM = re.compile(r"^\s*-\s*\{.*\bid:\s*(?P<q>['\"]?)(?P<id>[^'\",}\s]+)(?P=q)\s*[,}]")
_POINTS = re.compile(r"(?P<head>\bpoints:\s*)(?P<value>-?\d+(?:\.\d+)?)")
_VERSION = re.compile(r"^version:\s*\d+", re.MULTILINE)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def with_points(
    text: str, points: dict[str, float], version: int, header: str = "", filename: str = "<text>"
) -> str:
    """``text`` with ``points[id]`` for each rule id, ``version`` and ``header`` comment lines.

    Raises :class:`RuleFileError` when a rule's points cannot be found or the result does not
    load with exactly those points.
    """
    lines = text.splitlines(keepends=True)
    done: set[str] = set()
    for index, line in enumerate(lines):
        flow = _FLOW_ITEM.match(line)
        if flow is not None and flow["id"] in points:
            new = _number(points[flow["id"]])
            replaced, n = _POINTS.subn(rf"\g<head>{new}", line, count=1)
            if n:
                lines[index] = replaced
                done.add(flow["id"])
            continue
        block = _ID_LINE.match(line)
        if block is None or block["id"] not in points:
            continue
        rule_id = block["id"]
        item_indent = len(block["indent"])
        for j in range(index + 1, len(lines)):
            candidate = lines[j]
            stripped = candidate.strip()
            if not stripped or stripped.startswith("#"):
                continue
            indent = len(candidate) - len(candidate.lstrip())
            if indent <= item_indent:
                break
            if stripped.startswith("points:") and indent == item_indent + 2:
                value = _number(points[rule_id])
                lines[j] = _POINTS.sub(rf"\g<head>{value}", candidate, count=1)
                done.add(rule_id)
                break
    missing = sorted(set(points) - done)
    if missing:
        raise RuleFileError(
            [Problem(filename, 1, f"no `points:` line found for rule {rule}") for rule in missing]
        )
    result = "".join(lines)
    result, n = _VERSION.subn(f"version: {version}", result, count=1)
    if not n:
        raise RuleFileError([Problem(filename, 1, "no top-level `version:` line")])
    if header:
        comment = "".join(f"# {row}".rstrip() + "\n" for row in header.splitlines())
        result = comment + result
    loaded = load_ruleset_text(result, filename)
    written: dict[str, float] = {}
    for spec in loaded.ruleset.components.values():
        written.update({rule.id: rule.points for rule in spec.criteria})
        written.update({rule.id: rule.points for rule in spec.actions})
    wrong = [rule for rule, value in points.items() if written.get(rule) != value]
    if wrong or loaded.version != version:
        raise RuleFileError(
            [
                Problem(filename, 1, f"rewriting left rule {rule} with other points")
                for rule in wrong
            ]
            or [Problem(filename, 1, "rewriting did not set the version")]
        )
    return result
