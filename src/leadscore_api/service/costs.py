"""Acquisition costs: what each source cost per month, entered one by one or as a CSV file.

The cost per lead KPI divides these by the leads each source brought. Amounts are euros with
cents; a source that costs nothing (referrals, organic search) should be entered as 0, so the
report can tell "free" from "not entered".

A CSV import is all or nothing: every row is checked first and one bad row refuses the file,
naming the row and the column, so that a half-imported month never skews the KPI.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.errors import FieldProblem, InvalidInput, NotFound
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.report_models import AcquisitionCost
from leadscore_api.storage.repositories import costs as costs_repo
from leadscore_api.storage.unit_of_work import in_transaction

#: A source name as the ``source`` attribute carries it: letters, digits, ``_ . - +`` and spaces.
SOURCE_PATTERN = r"^[^\W_][\w .+-]{0,99}$"
MONTH_PATTERN = r"^(19|2[0-9])[0-9]{2}-(0[1-9]|1[0-2])$"
#: A month of a single source above this is a typo, not a budget.
MAX_AMOUNT = Decimal("1000000000")
#: Rows in one CSV import (a source × month table: ten sources for ten years is 1,200).
MAX_ROWS = 10_000

_SOURCE_RE = re.compile(SOURCE_PATTERN)
_MONTH_RE = re.compile(MONTH_PATTERN)
_CENT = Decimal("0.01")

#: Accepted header names for each column (English and Italian), compared casefolded.
_COLUMNS = {
    "source": ("source", "fonte", "canale", "channel"),
    "month": ("month", "mese"),
    "amount": ("amount", "cost", "costo", "importo", "spesa"),
}


@dataclass(frozen=True)
class CostEntry:
    source: str
    month: str
    amount: float
    updated_at: datetime

    @classmethod
    def of(cls, row: AcquisitionCost) -> CostEntry:
        return cls(
            source=row.source, month=row.month, amount=float(row.amount), updated_at=row.updated_at
        )


def check_source(value: str, field: str = "source") -> str:
    if not _SOURCE_RE.match(value):
        raise InvalidInput.field(
            field, "must be 1–100 letters, digits, spaces or _ . - + (starting with one of them)"
        )
    return value


def check_month(value: str, field: str = "month") -> str:
    if not _MONTH_RE.match(value):
        raise InvalidInput.field(field, "must be a month as YYYY-MM, e.g. 2026-11")
    return value


def parse_amount(text: str) -> Decimal:
    """A euro amount as people type it: ``1234.5``, ``1.234,50``, ``€ 1234``; raises ValueError."""
    cleaned = text.strip().replace("€", "").replace("EUR", "").replace(" ", "").replace("'", "")
    if "," in cleaned and "." in cleaned:
        # The last separator is the decimal one: 1.234,50 (Italian) or 1,234.50 (English).
        if cleaned.rfind(",") > cleaned.rfind("."):
            cleaned = cleaned.replace(".", "").replace(",", ".")
        else:
            cleaned = cleaned.replace(",", "")
    elif "," in cleaned:
        cleaned = cleaned.replace(",", ".")
    if not re.fullmatch(r"[+-]?[0-9]+(\.[0-9]+)?", cleaned):
        raise ValueError("is not an amount in euros (e.g. 1250.50 or 1.250,50)")
    return check_amount(Decimal(cleaned))


def check_amount(value: Decimal | float) -> Decimal:
    """Euros with cents, 0 to 1,000,000,000; raises ValueError naming the problem."""
    try:
        amount = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except InvalidOperation as exc:
        raise ValueError("is not a number") from exc
    if not amount.is_finite():
        raise ValueError("must be a finite number")
    if amount < 0:
        raise ValueError("must not be negative")
    if amount > MAX_AMOUNT:
        raise ValueError(f"must be at most {MAX_AMOUNT:,} euros")
    return amount.quantize(_CENT, rounding=ROUND_HALF_UP)


def put_cost(
    session_factory: sessionmaker[Session], source: str, month: str, amount: Decimal | float
) -> CostEntry:
    check_source(source)
    check_month(month)
    try:
        checked = check_amount(amount)
    except ValueError as exc:
        raise InvalidInput.field("amount", str(exc)) from None

    def work(session: Session) -> CostEntry:
        (row,) = costs_repo.put_costs(session, [(source, month, checked)], utcnow())
        return CostEntry.of(row)

    return in_transaction(session_factory, work)


def delete_cost(session_factory: sessionmaker[Session], source: str, month: str) -> None:
    check_source(source)
    check_month(month)

    def work(session: Session) -> bool:
        return costs_repo.delete_cost(session, source, month)

    if not in_transaction(session_factory, work):
        raise NotFound(f"no cost is entered for source {source!r} in {month}")


def list_costs(
    session: Session,
    *,
    source: str | None = None,
    first_month: str | None = None,
    last_month: str | None = None,
) -> list[CostEntry]:
    rows = costs_repo.list_costs(
        session, source=source, first_month=first_month, last_month=last_month
    )
    return [CostEntry.of(row) for row in rows]


def parse_csv(data: bytes) -> list[tuple[str, str, Decimal]]:
    """The rows of a costs CSV (header ``source,month,amount``; ``;`` works too), all checked.

    Raises ``InvalidInput`` listing every bad row as ``rows[N].column`` (N counts data rows
    from 1, as a spreadsheet user sees them below the header).
    """
    if b"\x00" in data:
        raise InvalidInput.field("body", "contains a NUL byte; send the CSV as UTF-8 text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput.field(
            "body", f"is not UTF-8 (byte {exc.start}); save the CSV as UTF-8"
        ) from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise InvalidInput.field("body", "is empty; send a header source,month,amount and rows")
    delimiter = ";" if lines[0].count(";") > lines[0].count(",") else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = [name.strip().casefold() for name in next(reader)]
    positions: dict[str, int] = {}
    for column, names in _COLUMNS.items():
        found = [index for index, name in enumerate(header) if name in names]
        if not found:
            raise InvalidInput.field(
                "header", f"has no {column} column (accepted names: {', '.join(names)})"
            )
        positions[column] = found[0]

    problems: list[FieldProblem] = []
    entries: dict[tuple[str, str], Decimal] = {}
    for number, row in enumerate(reader, start=1):
        if not any(cell.strip() for cell in row):
            continue
        if number > MAX_ROWS:
            raise InvalidInput.field("body", f"has more than {MAX_ROWS} rows; split the file")
        cells = {column: row[i].strip() if i < len(row) else "" for column, i in positions.items()}
        source, month = cells["source"], cells["month"]
        if not _SOURCE_RE.match(source):
            problems.append(
                {"field": f"rows[{number}].source", "message": "must be 1–100 letters or digits"}
            )
        if not _MONTH_RE.match(month):
            problems.append(
                {"field": f"rows[{number}].month", "message": "must be YYYY-MM, e.g. 2026-11"}
            )
        try:
            amount = parse_amount(cells["amount"])
        except ValueError as exc:
            problems.append({"field": f"rows[{number}].amount", "message": str(exc)})
            continue
        if (source, month) in entries:
            problems.append(
                {
                    "field": f"rows[{number}]",
                    "message": f"repeats source {source!r} and month {month}",
                }
            )
        entries[(source, month)] = amount
    if problems:
        raise InvalidInput.fields(problems[:50])
    if not entries:
        raise InvalidInput.field("body", "has a header but no rows")
    return [(source, month, amount) for (source, month), amount in entries.items()]


def import_csv(session_factory: sessionmaker[Session], data: bytes) -> list[CostEntry]:
    """Check the whole file, then store every row in one transaction."""
    entries = parse_csv(data)

    def work(session: Session) -> list[CostEntry]:
        return [CostEntry.of(r) for r in costs_repo.put_costs(session, entries, utcnow())]

    return in_transaction(session_factory, work)


def costs_for_months(session: Session, months: Sequence[str]) -> list[CostEntry]:
    return [CostEntry.of(row) for row in costs_repo.list_costs(session, months=months)]
