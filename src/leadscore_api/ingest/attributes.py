"""From form answers to canonical lead attributes: field maps and number reading.

Small businesses build forms in their own language with their own field names ("ruolo",
"dipendenti", "fatturato") and their visitors type numbers the way they write them ("1.200",
"5.000.000", "500K-1M"). The rules compare numbers (``employees > 50``), so everything numeric
is read into a number here, once, before it reaches the scoring core.

Reading numbers, in order:

* Currency signs and words (``€``, ``EUR``, ``euro``), spaces and a leading "circa"/"about" are
  ignored.
* A dot or comma followed by exactly three digits is a thousands separator ("1.200" and
  "1,200" are 1200; "5.000.000" is 5 000 000). Otherwise the last separator is the decimal mark
  ("1,5" and "1.5" are 1.5; "1.234,5" is 1234.5).
* Suffixes multiply: ``k``/``mila``/``thousand`` by 1 000; ``m``/``mln``/``mio``/``milioni``/
  ``million`` by 1 000 000; ``mld``/``miliardi``/``bn``/``billion`` by 10^9. In a range the
  suffix of the upper bound also applies to a bare lower bound ("1-5M" is 1M to 5M).
* A closed range ("500K-1M", "10 - 50", "da 10 a 50", "between 10 and 50") becomes its midpoint,
  a value inside the band, so a rule threshold at a band edge classifies the answer as the band
  ("500K-1M" → 750 000 sits in the 500K-1M band; "51-200" → 125.5 employees is > 50).
* "X+", "≥ X", "X or more", "almeno X" become X; "> X", "over X", "more than X", "oltre X",
  "più di X", "sopra X" become X + 1 (the smallest whole number above X, so ``gt X`` holds);
  "< X", "under X", "less than X", "meno di X", "fino a X", "up to X" become X / 2 (the midpoint
  of 0..X).
* Whole results are integers, others floats. Anything else is not a number (the attribute is
  left out and the reason kept in the event's ``properties.attribute_errors``).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

#: Canonical attributes read as numbers.
NUMERIC_ATTRIBUTES = frozenset(
    {"employees", "annual_revenue_eur", "budget_eur", "age", "timeline_days"}
)
#: Canonical attributes read as a list of strings ("a, b; c" is split).
LIST_ATTRIBUTES = frozenset({"interests"})

#: Form field names understood without configuration (Italian and English), after
#: normalisation (lower case, accents removed, spaces and dashes as underscores).
DEFAULT_FIELD_MAP: dict[str, str] = {
    # identity
    "email": "email",
    "e_mail": "email",
    "mail": "email",
    "email_address": "email",
    "indirizzo_email": "email",
    "external_id": "external_id",
    # person
    "first_name": "first_name",
    "firstname": "first_name",
    "fname": "first_name",
    "nome": "first_name",
    "last_name": "last_name",
    "lastname": "last_name",
    "lname": "last_name",
    "surname": "last_name",
    "cognome": "last_name",
    "age": "age",
    "eta": "age",
    "marital_status": "marital_status",
    "stato_civile": "marital_status",
    "interests": "interests",
    "interessi": "interests",
    # company
    "company": "company",
    "company_name": "company",
    "azienda": "company",
    "societa": "company",
    "ragione_sociale": "company",
    "role": "role",
    "job_title": "role",
    "jobtitle": "role",
    "title": "role",
    "ruolo": "role",
    "posizione": "role",
    "qualifica": "role",
    "mansione": "role",
    "industry": "industry",
    "sector": "industry",
    "settore": "industry",
    "employees": "employees",
    "employee_count": "employees",
    "company_size": "employees",
    "dipendenti": "employees",
    "numero_dipendenti": "employees",
    "n_dipendenti": "employees",
    "annual_revenue_eur": "annual_revenue_eur",
    "annual_revenue": "annual_revenue_eur",
    "revenue": "annual_revenue_eur",
    "fatturato": "annual_revenue_eur",
    "fatturato_annuo": "annual_revenue_eur",
    "fatturato_annuale": "annual_revenue_eur",
    # place
    "country": "country",
    "paese": "country",
    "nazione": "country",
    "region": "region",
    "regione": "region",
    "city": "city",
    "citta": "city",
    "comune": "city",
    # acquisition and BANT
    "source": "source",
    "fonte": "source",
    "lead_source": "source",
    "budget": "budget_eur",
    "budget_eur": "budget_eur",
    "authority": "authority",
    "need": "need",
    "esigenza": "need",
    "necessita": "need",
    "timeline_days": "timeline_days",
    "timeline": "timeline_days",
    "tempistica": "timeline_days",
}

_MULTIPLIERS: dict[str, float] = {
    "k": 1e3,
    "mila": 1e3,
    "thousand": 1e3,
    "m": 1e6,
    "mln": 1e6,
    "mio": 1e6,
    "milioni": 1e6,
    "milione": 1e6,
    "million": 1e6,
    "millions": 1e6,
    "mld": 1e9,
    "miliardi": 1e9,
    "miliardo": 1e9,
    "bn": 1e9,
    "billion": 1e9,
}

_NUMBER = r"\d[\d.,]*"
_SUFFIX = r"(?:" + "|".join(sorted(_MULTIPLIERS, key=len, reverse=True)) + r")?"
_AMOUNT = re.compile(rf"^({_NUMBER})\s*({_SUFFIX})$")
_RANGE = re.compile(
    rf"^(?:da|from|between|tra|fra)?\s*({_NUMBER})\s*({_SUFFIX})\s*"
    rf"(?:-|\u2013|\u2014|to|a|and|e)\s*({_NUMBER})\s*({_SUFFIX})$"
)
_AT_LEAST = re.compile(
    r"^(?:>=|≥|almeno|at least|min\.?|minimo)\s*(.+)$|^(.+?)\s*(?:\+|or more|o più|o piu)$"
)
_MORE_THAN = re.compile(
    r"^(?:>|over|more than|above|oltre i|oltre|più di|piu di|sopra i|sopra)\s*(.+)$"
)
_LESS_THAN = re.compile(
    r"^(?:<=|≤|<|under|below|less than|up to|meno di|fino ad|fino a|sotto i|sotto|max\.?|massimo)"
    r"\s*(.+)$"
)
_NOISE = re.compile(r"€|\$|£|\b(?:eur|euro|dipendenti|employees|persone|anni|years|giorni|days)\b")
_APPROX = re.compile(r"^(?:circa|about|approx\.?|approximately|ca\.?|~)\s*")


class NotANumber(ValueError):
    """The text cannot be read as a number; the message quotes it."""


def normalise_field_name(name: str) -> str:
    """``"Numero dipendenti"`` → ``"numero_dipendenti"``; ``"Città"`` → ``"citta"``."""
    decomposed = unicodedata.normalize("NFKD", name)
    ascii_only = "".join(c for c in decomposed if not unicodedata.combining(c))
    return re.sub(r"[^a-z0-9]+", "_", ascii_only.strip().lower()).strip("_")


def _plain_number(text: str) -> float:
    """One number with Italian or English separators (see the module docstring)."""
    if not re.fullmatch(r"\d[\d.,]*", text) or text[-1] in ".,":
        raise NotANumber(text)
    separators = [c for c in text if c in ".,"]
    if not separators:
        return float(text)
    if len(set(separators)) == 2:
        decimal_mark = text[max(text.rfind("."), text.rfind(","))]
        thousands = "," if decimal_mark == "." else "."
        if separators.count(decimal_mark) > 1:
            raise NotANumber(text)
        return float(text.replace(thousands, "").replace(decimal_mark, "."))
    mark = separators[0]
    groups = text.split(mark)
    if len(groups) > 2 or len(groups[-1]) == 3:
        # "1.200", "5.000.000", "1,200": thousands separators (3 digits in every later group).
        if all(len(group) == 3 for group in groups[1:]) and 1 <= len(groups[0]) <= 3:
            return float("".join(groups))
        raise NotANumber(text)
    return float(text.replace(mark, "."))


def _amount(number: str, suffix: str) -> float:
    return _plain_number(number) * _MULTIPLIERS.get(suffix, 1.0)


def _tidy(value: float) -> int | float:
    return int(value) if value == int(value) else value


def _single(text: str) -> float:
    match = _AMOUNT.match(text)
    if match is None:
        raise NotANumber(text)
    return _amount(match.group(1), match.group(2))


def parse_number(value: Any) -> int | float:
    """Read a number typed by a person (see the module docstring for every accepted form).

    Raises ``NotANumber`` when the value is not a number in any of those forms.
    """
    if isinstance(value, bool):
        raise NotANumber(str(value))
    if isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")):
            raise NotANumber(str(value))
        return _tidy(float(value))
    if not isinstance(value, str):
        raise NotANumber(repr(value))
    text = _NOISE.sub(" ", value.strip().lower())
    text = _APPROX.sub("", re.sub(r"\s+", " ", text).strip())
    text = re.sub(r"(?<=\d) (?=\d{3}\b)", "", text)  # "1 200" (space as thousands separator)
    if not text:
        raise NotANumber(value)
    try:
        match = _RANGE.match(text)
        if match is not None:
            high = _amount(match.group(3), match.group(4))
            low = _amount(match.group(1), match.group(2))
            if not match.group(2) and low * _MULTIPLIERS.get(match.group(4), 1.0) <= high:
                low *= _MULTIPLIERS.get(match.group(4), 1.0)  # "1-5M" is 1M-5M
            if high < low:
                raise NotANumber(value)
            return _tidy((low + high) / 2)
        for pattern, adjust in (
            (_AT_LEAST, lambda x: x),
            (_MORE_THAN, lambda x: float(int(x) + 1)),
            (_LESS_THAN, lambda x: x / 2),
        ):
            bound = pattern.match(text)
            if bound is not None:
                inner = next(group for group in bound.groups() if group is not None)
                return _tidy(adjust(_single(inner.strip())))
        return _tidy(_single(text))
    except NotANumber:
        raise NotANumber(value) from None


def parse_field_map(text: str | None, setting_name: str) -> dict[str, str]:
    """A field map from configuration: a JSON object, or comma-separated ``name=attribute`` pairs.

    ``{"ruolo": "role", "n_dip": "employees"}`` and ``ruolo=role,n_dip=employees`` are the same
    map. Keys are kept as written (Typeform refs are case-sensitive) and also matched normalised.
    """
    if text is None or not text.strip():
        return {}
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            loaded = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{setting_name} is not valid JSON: {exc.msg}") from exc
        if not isinstance(loaded, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in loaded.items()
        ):
            raise ValueError(f"{setting_name} must map field names to attribute names (strings)")
        return {k: v.strip() for k, v in loaded.items()}
    result: dict[str, str] = {}
    for pair in stripped.split(","):
        if not pair.strip():
            continue
        name, sep, attribute = pair.partition("=")
        if not sep or not name.strip() or not attribute.strip():
            raise ValueError(f"{setting_name}: {pair.strip()!r} is not name=attribute")
        result[name.strip()] = attribute.strip()
    return result


def resolve_field(name: str, field_map: Mapping[str, str]) -> str | None:
    """The canonical attribute for a form field name, or None when it is not mapped.

    The configured map wins (exact name, then normalised name); then the built-in Italian and
    English names of ``DEFAULT_FIELD_MAP``.
    """
    if name in field_map:
        return field_map[name]
    normalised = normalise_field_name(name)
    for key, attribute in field_map.items():
        if normalise_field_name(key) == normalised:
            return attribute
    return DEFAULT_FIELD_MAP.get(normalised)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        parts = [str(v).strip() for v in value if v is not None and str(v).strip()]
        return ", ".join(parts) if parts else None
    text = str(value).strip()
    return text or None


def convert_attribute(attribute: str, value: Any) -> Any:
    """A value in the form the rules expect: a number, a list of strings, or trimmed text.

    Returns None for an empty answer (a blank field never erases what the lead told us before).
    Raises ``NotANumber`` for a numeric attribute that is not a number.
    """
    if attribute in NUMERIC_ATTRIBUTES:
        if isinstance(value, list):
            value = value[0] if len(value) == 1 else _text(value)
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return parse_number(value)
    if attribute in LIST_ATTRIBUTES:
        items = value if isinstance(value, list) else re.split(r"[,;]", str(value or ""))
        cleaned = [str(item).strip() for item in items if item is not None and str(item).strip()]
        return cleaned or None
    if isinstance(value, bool | int | float):
        return value
    return _text(value)


def map_fields(
    fields: Iterable[tuple[str, Any]], field_map: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """Split form fields into (attributes, unmapped fields, attribute errors).

    ``email`` and ``external_id`` come back among the attributes; the caller turns them into the
    event's lead reference.
    """
    attributes: dict[str, Any] = {}
    unmapped: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, value in fields:
        attribute = resolve_field(name, field_map)
        if attribute is None:
            unmapped[name] = value
            continue
        try:
            converted = convert_attribute(attribute, value)
        except NotANumber:
            errors[attribute] = f"could not read a number from {value!r} (field {name!r})"
            continue
        if converted is not None:
            attributes[attribute] = converted
    return attributes, unmapped, errors
