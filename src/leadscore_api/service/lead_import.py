"""Import existing leads from a spreadsheet (CSV or XLSX), scored like any other lead.

SMEs keep their leads in Excel before they have a CRM, so the first thing they do with
leadscore is load that sheet. Two passes over the file, both streamed:

1. **Check** (the dry run): every row is read, its cells converted to lead attributes and
   checked; every problem is reported with its row number, column and a sentence. Only sets of
   identity hashes grow with the file (to report duplicate emails and external ids); the rows
   themselves are never held.
2. **Import**, only when the check found nothing: the file is read again and each row becomes a
   canonical ``lead.imported`` event carrying the row's attributes, ingested in chunks through
   :func:`leadscore_api.service.ingestion.run_ingest`, each chunk its own transaction. So an
   imported lead is stored, scored, routed and written to the history exactly as a lead that
   arrived through a webhook, and a re-import of the same file changes nothing: an event's id is
   a hash of its row's content, so the same row is a ``duplicate`` the second time.

A chunk that fails (the database went away) leaves the chunks before it imported; running the
import again finishes the job, since the imported rows are duplicates by then.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import math
import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from leadscore_api import json_codec
from leadscore_api.errors import FieldProblem, InvalidInput
from leadscore_api.ingest.events import CanonicalEvent, LeadRef
from leadscore_api.service.ingestion import FUTURE_TOLERANCE, run_ingest
from leadscore_api.service.rulesets import RulesetRegistry
from leadscore_api.storage.base import utcnow

FileFormat = Literal["csv", "xlsx"]

#: The event type an imported row is stored as. Not a behaviour: it scores nothing itself, its
#: attributes update the lead (as ``PATCH /v1/leads/{id}`` does).
IMPORTED = "lead.imported"
#: Rows per transaction: large enough to amortise a transaction, small enough that memory and
#: lock time stay flat whatever the file's size.
CHUNK_ROWS = 500
#: Row problems listed in a report; the rest are counted.
MAX_REPORTED_ERRORS = 1000
#: Longest cell text accepted (a note pasted into a cell is fine, a novel is a mistake).
MAX_CELL_CHARS = 2000
#: Spreadsheet times without a zone are Italian office times.
LOCAL_ZONE = ZoneInfo("Europe/Rome")

IDENTITY_TARGETS = ("email", "external_id")
#: Not an attribute: when the lead was created or last updated in the sheet (defaults to now).
TIME_TARGET = "occurred_at"
INT_ATTRIBUTES = frozenset({"employees", "age", "timeline_days"})
NUMBER_ATTRIBUTES = frozenset({"annual_revenue_eur", "budget_eur"})
LIST_ATTRIBUTES = frozenset({"interests"})
TEXT_ATTRIBUTES = frozenset(
    {
        "first_name",
        "last_name",
        "company",
        "role",
        "industry",
        "country",
        "region",
        "city",
        "marital_status",
        "source",
        "segment",
        "authority",
        "need",
        "phone",
        "website",
    }
)
#: The canonical attributes of design §9 (plus phone, website and segment).
KNOWN_ATTRIBUTES = INT_ATTRIBUTES | NUMBER_ATTRIBUTES | LIST_ATTRIBUTES | TEXT_ATTRIBUTES
#: Your own attributes are mapped as ``attributes.<name>``.
CUSTOM_PREFIX = "attributes."
_CUSTOM_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

#: Headers recognised without a column map (compared lower-case, without accents or
#: punctuation): Italian and English names of the canonical attributes.
DEFAULT_HEADERS: dict[str, str] = {
    "email": "email",
    "e mail": "email",
    "mail": "email",
    "indirizzo email": "email",
    "indirizzo e mail": "email",
    "posta elettronica": "email",
    "external id": "external_id",
    "id": "external_id",
    "id crm": "external_id",
    "crm id": "external_id",
    "codice": "external_id",
    "codice cliente": "external_id",
    "first name": "first_name",
    "nome": "first_name",
    "last name": "last_name",
    "surname": "last_name",
    "cognome": "last_name",
    "company": "company",
    "azienda": "company",
    "societa": "company",
    "ragione sociale": "company",
    "role": "role",
    "ruolo": "role",
    "ruolo aziendale": "role",
    "qualifica": "role",
    "job title": "role",
    "title": "role",
    "posizione": "role",
    "industry": "industry",
    "settore": "industry",
    "settore di attivita": "industry",
    "employees": "employees",
    "dipendenti": "employees",
    "numero di dipendenti": "employees",
    "numero dipendenti": "employees",
    "n dipendenti": "employees",
    "annual revenue eur": "annual_revenue_eur",
    "annual revenue": "annual_revenue_eur",
    "revenue": "annual_revenue_eur",
    "fatturato": "annual_revenue_eur",
    "fatturato annuo": "annual_revenue_eur",
    "fatturato eur": "annual_revenue_eur",
    "country": "country",
    "paese": "country",
    "nazione": "country",
    "region": "region",
    "regione": "region",
    "city": "city",
    "citta": "city",
    "comune": "city",
    "age": "age",
    "eta": "age",
    "marital status": "marital_status",
    "stato civile": "marital_status",
    "interests": "interests",
    "interessi": "interests",
    "source": "source",
    "fonte": "source",
    "canale": "source",
    "origine": "source",
    "segment": "segment",
    "segmento": "segment",
    "budget eur": "budget_eur",
    "budget": "budget_eur",
    "authority": "authority",
    "autorita": "authority",
    "need": "need",
    "esigenza": "need",
    "necessita": "need",
    "timeline days": "timeline_days",
    "tempistica giorni": "timeline_days",
    "phone": "phone",
    "telefono": "phone",
    "website": "website",
    "sito": "website",
    "sito web": "website",
    "occurred at": TIME_TARGET,
    "created at": TIME_TARGET,
    "data": TIME_TARGET,
    "data creazione": TIME_TARGET,
    "data inserimento": TIME_TARGET,
}

#: A leading apostrophe is how our export (and spreadsheet users) keep a text cell from being
#: read as a formula; it is not part of the value.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class ImportRejected(InvalidInput):
    """The file has row problems: nothing was imported."""

    problem_type = "import-rejected"
    title = "The file has problems; nothing was imported"


class ColumnMapError(InvalidInput):
    """The column map names a column the file lacks, or an attribute leadscore does not know."""

    problem_type = "column-map"
    title = "Invalid column map"


class UnreadableFile(InvalidInput):
    """Not a CSV or XLSX file leadscore can read (encoding, format, no header row)."""

    problem_type = "unreadable-file"
    title = "Unreadable spreadsheet"

    @classmethod
    def file(cls, message: str) -> UnreadableFile:
        return cls.field("file", message)


@dataclass(frozen=True)
class RowProblem:
    row: int
    column: str | None
    message: str

    def as_field(self) -> FieldProblem:
        where = f"rows[{self.row}]" + (f".{self.column}" if self.column else "")
        return {"field": where, "message": self.message}


@dataclass
class ImportReport:
    """What a check or an import found and did."""

    format: FileFormat
    dry_run: bool
    columns: dict[str, str]
    ignored_columns: list[str]
    rows: int = 0
    valid_rows: int = 0
    error_count: int = 0
    errors: list[RowProblem] = field(default_factory=list)
    imported: int = 0
    unchanged: int = 0
    rejected: int = 0
    #: Rows about people erased before: an import does not bring them back.
    erased: int = 0
    #: Rows imported with a remark, e.g. an email and an external id of two different leads
    #: (the row went to the email's lead): ``(row, remark)``, the first 100.
    warnings: list[tuple[int, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def add_error(self, problem: RowProblem) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(problem)


# -- reading the file --------------------------------------------------------------------------


def detect_format(path: Path, filename: str | None = None) -> FileFormat:
    """XLSX files are ZIP archives; anything else is read as CSV text."""
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic == b"PK\x03\x04":
        return "xlsx"
    name = (filename or path.name).lower()
    if name.endswith((".xlsx", ".xlsm")):
        raise UnreadableFile.file("is named .xlsx but is not an XLSX workbook")
    if name.endswith(".xls"):
        raise UnreadableFile.file("is an old .xls workbook; save it as .xlsx or CSV (UTF-8)")
    return "csv"


def _csv_rows(path: Path, encoding: str) -> Iterator[list[Any]]:
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise InvalidInput.field("encoding", f"{encoding!r} is not a known text encoding") from None
    with path.open("r", encoding=encoding, newline="", errors="strict") as handle:
        try:
            sample = handle.read(64 * 1024)
        except UnicodeDecodeError:
            raise _not_text(encoding) from None
        handle.seek(0)
        # Italian Excel writes CSV with ";" (the comma is the decimal separator).
        delimiter = ";"
        try:
            delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
        except csv.Error:
            first = sample.split("\n", 1)[0]
            delimiter = max(",;\t|", key=first.count)
        reader = csv.reader(handle, delimiter=delimiter)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError:
                raise _not_text(encoding, reader.line_num + 1) from None
            except csv.Error as exc:
                raise UnreadableFile.file(
                    f"is not valid CSV at line {reader.line_num}: {exc}"
                ) from None
            yield row


def _not_text(encoding: str, line: int | None = None) -> UnreadableFile:
    where = f" at line {line}" if line else ""
    return UnreadableFile.file(
        f"is not {encoding} text{where}; save it as CSV UTF-8 or XLSX, or name its encoding"
        " (e.g. cp1252)",
    )


def _xlsx_rows(path: Path, sheet: str | None) -> Iterator[list[Any]]:
    from openpyxl import load_workbook

    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many kinds for a damaged archive
        raise UnreadableFile.file(f"is not a readable XLSX workbook ({exc})") from None
    try:
        if sheet is not None and sheet not in workbook.sheetnames:
            raise InvalidInput.field(
                "sheet", f"no sheet {sheet!r}; the workbook has {workbook.sheetnames}"
            )
        worksheet = workbook[sheet] if sheet is not None else workbook.worksheets[0]
        if not hasattr(worksheet, "iter_rows"):
            raise InvalidInput.field("sheet", f"{worksheet.title!r} is a chart, not a sheet")
        rows = worksheet.iter_rows(values_only=True)
        number = 0
        while True:
            try:
                values = next(rows)
            except StopIteration:
                return
            except Exception as exc:  # a damaged sheet fails only when its rows are read
                raise UnreadableFile.file(
                    f"XLSX row {number + 1} cannot be read ({type(exc).__name__}: {exc})"
                ) from None
            number += 1
            yield list(values)
    finally:
        workbook.close()


def iter_file_rows(
    path: Path, file_format: FileFormat, *, sheet: str | None = None, encoding: str = "utf-8-sig"
) -> Iterator[list[Any]]:
    """The file's rows, header first, one at a time (bounded memory whatever the size)."""
    if file_format == "xlsx":
        return _xlsx_rows(path, sheet)
    return _csv_rows(path, encoding)


# -- the column map ----------------------------------------------------------------------------


def normalise_header(header: str) -> str:
    """``"Settore di attività"`` → ``"settore di attivita"``: how headers are compared."""
    text = unicodedata.normalize("NFKD", header)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


def _check_target(target: str) -> str | None:
    """None when ``target`` is something a column can be mapped to, else why not."""
    if target in IDENTITY_TARGETS or target == TIME_TARGET or target in KNOWN_ATTRIBUTES:
        return None
    if target.startswith(CUSTOM_PREFIX):
        name = target[len(CUSTOM_PREFIX) :]
        if _CUSTOM_NAME.match(name):
            return None
        return f"{name!r} is not an attribute name (lower case letters, digits and _)"
    return (
        f"{target!r} is not a lead attribute; use one of "
        f"{', '.join(sorted(set(IDENTITY_TARGETS) | {TIME_TARGET} | KNOWN_ATTRIBUTES))},"
        f" or {CUSTOM_PREFIX}<name> for an attribute of your own"
    )


def parse_column_map(text: str | None) -> dict[str, str | None]:
    """A column map given as JSON text: ``{"Ruolo": "role", "Note": null}``."""
    if text is None or not text.strip():
        return {}
    try:
        data = json_codec.parse(text)
    except ValueError:
        raise ColumnMapError.field("column_map", "is not valid JSON") from None
    if not isinstance(data, dict):
        raise ColumnMapError.field(
            "column_map",
            'must be a JSON object of column header → attribute, e.g. {"Ruolo": "role"}',
        )
    out: dict[str, str | None] = {}
    for header, target in data.items():
        try:
            header.encode("utf-8")
            if target is not None and isinstance(target, str):
                target.encode("utf-8")
        except UnicodeEncodeError:
            raise ColumnMapError.field(
                "column_map", "contains an invalid character (a lone surrogate)"
            ) from None
        if target is not None and not isinstance(target, str):
            raise ColumnMapError.field(
                f"column_map.{header}", "must be an attribute name, or null to ignore the column"
            )
        out[str(header)] = target
    return out


def resolve_columns(
    headers: list[str], explicit: Mapping[str, str | None]
) -> tuple[dict[int, str], list[str]]:
    """Column index → target, and the headers left unused.

    The explicit map wins over the default one; a header mapped to null is ignored.
    Raises :class:`ColumnMapError` naming the map entry that is wrong.
    """
    problems: list[FieldProblem] = []
    by_exact = {h: i for i, h in enumerate(headers) if h}
    by_normal: dict[str, int] = {}
    for i, h in enumerate(headers):
        by_normal.setdefault(normalise_header(h), i)
    explicit_index: dict[int, str | None] = {}
    for header, target in explicit.items():
        name = f"column_map.{header}"
        index = by_exact.get(header)
        if index is None:
            index = by_normal.get(normalise_header(header))
        if index is None:
            shown = ", ".join(repr(h) for h in headers if h)
            problems.append(
                {"field": name, "message": f"the file has no column {header!r} (it has {shown})"}
            )
            continue
        if target is not None:
            target = target.strip()
            why = _check_target(target)
            if why is not None:
                problems.append({"field": name, "message": why})
                continue
        explicit_index[index] = target
    if problems:
        raise ColumnMapError.fields(problems)

    mapping: dict[int, str] = {}
    unused: list[str] = []
    for i, header in enumerate(headers):
        if i in explicit_index:
            target = explicit_index[i]
        else:
            target = DEFAULT_HEADERS.get(normalise_header(header))
            if target is None and header.strip() in KNOWN_ATTRIBUTES:
                target = header.strip()
        if target is None:
            if header:
                unused.append(header)
            continue
        mapping[i] = target

    seen: dict[str, int] = {}
    for i, target in sorted(mapping.items()):
        if target in seen:
            first = headers[seen[target]]
            problems.append(
                {
                    "field": f"column_map.{headers[i]}",
                    "message": f"maps to {target!r} as column {first!r} does; map one of them"
                    " to null to ignore it",
                }
            )
        seen[target] = i
    if problems:
        raise ColumnMapError.fields(problems)
    if not any(t in IDENTITY_TARGETS for t in mapping.values()):
        shown = ", ".join(repr(h) for h in headers if h)
        raise ColumnMapError.field(
            "column_map",
            f"no column is the email or the external_id (the file has {shown}); map one,"
            ' e.g. {"E-mail aziendale": "email"}',
        )
    return mapping, unused


# -- cells to values ---------------------------------------------------------------------------


class CellError(ValueError):
    pass


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    text = str(value).strip()
    if "\x00" in text:
        raise CellError("contains a NUL character")
    if len(text) > MAX_CELL_CHARS:
        raise CellError(f"is longer than {MAX_CELL_CHARS} characters")
    if len(text) > 1 and text[0] == "'" and text[1] in _FORMULA_STARTS:
        text = text[1:]
    return text


_THOUSANDS_DOT = re.compile(r"^\d{1,3}(\.\d{3})+$")
_THOUSANDS_COMMA = re.compile(r"^\d{1,3}(,\d{3})+$")
_NUMBER = re.compile(r"^\d+(\.\d+)?$")
_SUFFIXES = {"k": 1_000, "m": 1_000_000, "mln": 1_000_000, "mio": 1_000_000}
#: Larger counts or amounts are a typo, not an SME (and stay exact in every JSON parser).
MAX_NUMBER = 10**15


def parse_number(value: Any) -> float | int:
    """A count or an amount as Italian and English spreadsheets write it.

    ``1.200`` and ``1,200`` are 1200 (a thousands separator followed by three digits), ``2,5``
    and ``2.5`` are 2.5, ``1.234.567,89`` and ``1,234,567.89`` are what they look like, ``5M``,
    ``5 mln`` and ``500K`` are 5,000,000 and 500,000, and ``€`` is ignored.
    """
    if isinstance(value, bool):
        raise CellError("is not a number")
    if isinstance(value, int | float):
        number: float | int = value
    else:
        text = _text(value).lower().replace("\u00a0", "").replace(" ", "").replace("'", "")
        for symbol in ("€", "eur"):
            text = text.replace(symbol, "")
        negative = text.startswith("-")
        text = text.lstrip("+-")
        factor = 1
        for suffix, multiplier in sorted(_SUFFIXES.items(), key=lambda s: -len(s[0])):
            if text.endswith(suffix):
                text, factor = text[: -len(suffix)], multiplier
                break
        if "." in text and "," in text:
            decimal = "," if text.rfind(",") > text.rfind(".") else "."
            thousands = "." if decimal == "," else ","
            text = text.replace(thousands, "").replace(decimal, ".")
        elif _THOUSANDS_DOT.match(text):
            text = text.replace(".", "")
        elif _THOUSANDS_COMMA.match(text):
            text = text.replace(",", "")
        else:
            text = text.replace(",", ".")
        if not _NUMBER.match(text):
            raise CellError("is not a number")
        parsed = float(text) * factor
        if negative:
            parsed = -parsed
        number = int(parsed) if parsed.is_integer() and "." not in text else parsed
    if isinstance(number, float) and not math.isfinite(number):
        raise CellError("is not a finite number")
    if abs(number) > MAX_NUMBER:
        raise CellError(f"is larger than {MAX_NUMBER:,}")
    if number < 0:
        raise CellError("must not be negative")
    if isinstance(number, float) and number.is_integer():
        number = int(number)
    return number


_DATE_FORMATS = ("%d/%m/%Y %H:%M:%S", "%d/%m/%Y %H:%M", "%d/%m/%Y", "%d-%m-%Y", "%d.%m.%Y")


def parse_time(value: Any) -> datetime:
    """A date or time cell; without a zone it is Italian local time."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime.combine(value, time())
    else:
        text = _text(value)
        moment_or_none: datetime | None = None
        try:
            moment_or_none = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            for fmt in _DATE_FORMATS:
                try:
                    moment_or_none = datetime.strptime(text, fmt)
                    break
                except ValueError:
                    continue
        if moment_or_none is None:
            raise CellError("is not a date (e.g. 2026-11-20, 20/11/2026 or 20/11/2026 10:30)")
        moment = moment_or_none
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=LOCAL_ZONE)
    return moment.astimezone(UTC)


def convert_cell(target: str, value: Any) -> Any:
    """The cell as the target's value; raises :class:`CellError` saying what is wrong."""
    if target in INT_ATTRIBUTES:
        number = parse_number(value)
        if not isinstance(number, int):
            raise CellError("is not a whole number")
        return number
    if target in NUMBER_ATTRIBUTES:
        return parse_number(value)
    if target in LIST_ATTRIBUTES:
        return [part.strip() for part in re.split(r"[,;|]", _text(value)) if part.strip()]
    if target == TIME_TARGET:
        return parse_time(value)
    return _text(value)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


# -- rows to events ----------------------------------------------------------------------------


@dataclass
class _Row:
    email: str | None = None
    external_id: str | None = None
    occurred_at: datetime | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


def _read_row(
    values: list[Any], mapping: dict[int, str], headers: list[str]
) -> tuple[_Row, list[tuple[str | None, str]]]:
    """The row's identity and attributes, and (column, problem) for each bad cell."""
    row = _Row()
    problems: list[tuple[str | None, str]] = []
    for index, target in mapping.items():
        value = values[index] if index < len(values) else None
        if _blank(value):
            continue
        column = headers[index]
        try:
            if target == "email":
                text = _text(value)
                try:
                    row.email = LeadRef(email=text).email
                except ValidationError:
                    raise CellError("is not an email address") from None
            elif target == "external_id":
                row.external_id = _text(value)
            elif target == TIME_TARGET:
                row.occurred_at = parse_time(value)
            else:
                name = target.removeprefix(CUSTOM_PREFIX)
                converted = convert_cell(target, value)
                if converted not in ("", []):
                    row.attributes[name] = converted
        except CellError as exc:
            shown = value if isinstance(value, str) and len(value) <= 40 else None
            problems.append((column, f"{shown!r} {exc}" if shown is not None else str(exc)))
    return row, problems


def _event_id(row: _Row) -> str:
    """The same row content gives the same id, so importing a file twice imports it once."""
    content = json_codec.dumps(
        [
            row.email,
            row.external_id,
            row.occurred_at.isoformat() if row.occurred_at else None,
            sorted(row.attributes.items()),
        ]
    )
    return "imp_" + hashlib.sha256(content.encode()).hexdigest()[:40]


def _event(row: _Row, row_number: int, filename: str, now: datetime) -> CanonicalEvent:
    return CanonicalEvent(
        id=_event_id(row),
        type=IMPORTED,
        occurred_at=row.occurred_at or now,
        lead=LeadRef(email=row.email, external_id=row.external_id),
        source="import",
        properties={"file": filename[:200], "row": row_number},
        attributes=row.attributes,
    )


def _identity_key(kind: str, value: str) -> bytes:
    # 16 bytes a person, not the whole string: a 100,000-row file stays a few MB of keys.
    return hashlib.blake2b(f"{kind}:{value}".encode(), digest_size=16).digest()


@dataclass
class ImportOptions:
    column_map: Mapping[str, str | None] = field(default_factory=dict)
    sheet: str | None = None
    encoding: str = "utf-8-sig"
    filename: str | None = None
    file_format: FileFormat | None = None


def _walk(
    path: Path,
    options: ImportOptions,
    report: ImportReport | None,
    on_row: Callable[[int, _Row], None],
    now: datetime,
) -> tuple[dict[int, str], list[str], FileFormat]:
    """Read the file once, checking every row; ``on_row`` gets each valid row."""
    file_format = options.file_format or detect_format(path, options.filename)
    rows = iter_file_rows(path, file_format, sheet=options.sheet, encoding=options.encoding)
    try:
        header_values = next(rows)
    except StopIteration:
        raise UnreadableFile.file("is empty: the first row must name the columns") from None
    try:
        headers = [_text(h) if not _blank(h) else "" for h in header_values]
    except CellError as exc:
        raise UnreadableFile.file(f"header row: {exc}") from None
    if not any(headers):
        raise UnreadableFile.file("the first row must name the columns; it is empty")
    mapping, unused = resolve_columns(headers, options.column_map)
    if report is not None:
        report.format = file_format
        report.columns = {headers[i]: t for i, t in sorted(mapping.items())}
        report.ignored_columns = unused
    seen: dict[bytes, int] = {}
    latest = now + FUTURE_TOLERANCE
    for row_number, values in enumerate(rows, start=2):
        if all(_blank(v) for v in values):
            continue
        row, problems = _read_row(values, mapping, headers)
        if row.email is None and row.external_id is None and not problems:
            problems.append((None, "has no email and no external_id"))
        if row.occurred_at is not None and row.occurred_at > latest:
            column = next(headers[i] for i, t in mapping.items() if t == TIME_TARGET)
            problems.append((column, "is in the future"))
        for kind, value in (("email", row.email), ("external_id", row.external_id)):
            if value is None:
                continue
            key = _identity_key(kind, value)
            first = seen.get(key)
            if first is not None:
                column = next(headers[i] for i, t in mapping.items() if t == kind)
                problems.append((column, f"{value!r} is also in row {first}"))
            else:
                seen[key] = row_number
        if report is not None:
            report.rows += 1
            for where, message in problems:
                report.add_error(RowProblem(row_number, where, message))
            if not problems:
                report.valid_rows += 1
        if not problems:
            on_row(row_number, row)
    return mapping, unused, file_format


def check_file(path: Path, options: ImportOptions, *, now: datetime | None = None) -> ImportReport:
    """The dry run: read every row and report every problem; nothing is written."""
    report = ImportReport(format="csv", dry_run=True, columns={}, ignored_columns=[])
    _walk(path, options, report, lambda _n, _r: None, now or utcnow())
    return report


def import_file(
    session_factory: sessionmaker[Session],
    registry: RulesetRegistry,
    path: Path,
    options: ImportOptions,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    checked: ImportReport | None = None,
) -> ImportReport:
    """Check the file; when every row is good (and not ``dry_run``), import it in chunks.

    ``checked`` is the report of a check just made with the same ``now`` (the CLI prints it
    before importing), so the file is not read a third time.

    Raises :class:`ImportRejected` (nothing imported) when a row has a problem and this is not
    a dry run; a dry run returns the report with its problems instead.
    """
    now = now or utcnow()
    report = checked if checked is not None else check_file(path, options, now=now)
    report.dry_run = dry_run
    if dry_run:
        return report
    if not report.ok:
        shown = [p.as_field() for p in report.errors[:100]]
        raise ImportRejected(
            f"{report.error_count} problem(s) in {report.rows} rows; nothing was imported."
            f" First: {shown[0]['field']}: {shown[0]['message']}",
            errors=shown,
        )
    filename = options.filename or path.name
    chunk: list[CanonicalEvent] = []

    def flush() -> None:
        if not chunk:
            return
        for event, result in zip(chunk, run_ingest(session_factory, registry, chunk), strict=True):
            if result.status == "accepted":
                report.imported += 1
            elif result.status == "duplicate":
                report.unchanged += 1
            elif result.status == "ignored":
                report.erased += 1
                continue
            else:
                report.rejected += 1
            remark = result.warning or result.error
            if remark and len(report.warnings) < 100:
                report.warnings.append((int(event.properties["row"]), remark))
        chunk.clear()

    def on_row(row_number: int, row: _Row) -> None:
        chunk.append(_event(row, row_number, filename, now))
        if len(chunk) >= CHUNK_ROWS:
            flush()

    fixed = ImportOptions(
        column_map=options.column_map,
        sheet=options.sheet,
        encoding=options.encoding,
        filename=options.filename,
        file_format=report.format,
    )
    _walk(path, fixed, None, on_row, now)
    flush()
    return report
