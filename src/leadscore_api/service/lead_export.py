"""Export scored leads as CSV or XLSX, with the filters of ``GET /v1/leads``.

The rows are read page by page through :func:`leadscore_api.service.leads.list_leads` (the
list's own filters and cursor), each page in a short read session of its own, so an export of
100,000 leads holds one page at a time and never a long transaction.

The file carries the lead's identity, its scoring (letter, score, tier, stage), who owns it and
what to do next, then the canonical attributes, so the same file can be imported again (the
importer ignores the scoring columns and recognises the attribute headers).

Every text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a
leading apostrophe: spreadsheet apps would otherwise run it as a formula (CSV/formula
injection, e.g. a lead who typed ``=HYPERLINK(...)`` as a company name). The importer removes
that apostrophe again.
"""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.service import leads as leads_service
from leadscore_api.storage.models import Lead
from leadscore_api.storage.repositories.leads import LeadFilters

ExportFormat = Literal["csv", "xlsx"]

#: Leads read per page (one short read transaction each).
PAGE_SIZE = 1000
SCORING_COLUMNS = (
    "email",
    "external_id",
    "letter",
    "score",
    "tier",
    "stage",
    "owner",
    "team",
    "next_action",
    "next_action_due",
    "updated_at",
)
ATTRIBUTE_COLUMNS = (
    "first_name",
    "last_name",
    "company",
    "role",
    "industry",
    "employees",
    "annual_revenue_eur",
    "country",
    "region",
    "city",
    "source",
    "segment",
    "interests",
)
COLUMNS = SCORING_COLUMNS + ATTRIBUTE_COLUMNS
MEDIA_TYPES: dict[ExportFormat, str] = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_text(text: str) -> str:
    """Text a spreadsheet app shows as text, never runs as a formula."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _iso(value: datetime | None) -> str:
    return value.isoformat().replace("+00:00", "Z") if value is not None else ""


def _cell(value: Any) -> Any:
    """Numbers stay numbers; everything else becomes safe text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return value
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, list):
        return safe_text(", ".join(str(v) for v in value))
    return safe_text(str(value))


def lead_row(lead: Lead) -> list[Any]:
    attributes = lead.attributes or {}
    scoring = {
        "email": lead.email,
        "external_id": lead.external_id,
        "letter": lead.letter,
        "score": lead.score,
        "tier": lead.tier,
        "stage": lead.stage,
        "owner": lead.owner,
        "team": lead.team,
        "next_action": lead.next_action,
        "next_action_due": lead.next_action_due,
        "updated_at": lead.updated_at,
    }
    return [_cell(scoring[c]) for c in SCORING_COLUMNS] + [
        _cell(attributes.get(c)) for c in ATTRIBUTE_COLUMNS
    ]


def iter_leads(
    read_factory: sessionmaker[Session], filters: LeadFilters
) -> Iterator[list[list[Any]]]:
    """Pages of export rows, in the list's order (oldest update first)."""
    cursor: str | None = None
    while True:
        with read_factory() as session:
            leads, cursor = leads_service.list_leads(session, replace(filters), cursor, PAGE_SIZE)
            page = [lead_row(lead) for lead in leads]
        if page:
            yield page
        if cursor is None:
            return


def csv_chunks(read_factory: sessionmaker[Session], filters: LeadFilters) -> Iterator[str]:
    """The CSV text in pieces of one page each (header first), for a streamed answer."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    yield buffer.getvalue()
    for page in iter_leads(read_factory, filters):
        buffer.seek(0)
        buffer.truncate()
        writer.writerows(page)
        yield buffer.getvalue()


def write_xlsx(read_factory: sessionmaker[Session], filters: LeadFilters, path: Path) -> int:
    """Write the workbook to ``path`` (openpyxl's write-only mode: rows go straight to disk)."""
    from openpyxl import Workbook

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("leads")
    sheet.append(list(COLUMNS))
    count = 0
    try:
        for page in iter_leads(read_factory, filters):
            for row in page:
                sheet.append(row)
                count += 1
    except BaseException:
        # A filter refused while reading (a 4xx): end openpyxl's row writer now, which would
        # otherwise raise into the garbage collector, writing to its closed temporary file.
        sheet.close()
        raise
    workbook.save(path)
    return count


def write_csv(read_factory: sessionmaker[Session], filters: LeadFilters, path: Path) -> int:
    """Write the CSV to ``path``; the number of leads written."""
    count = 0
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for page in iter_leads(read_factory, filters):
            writer.writerows(page)
            count += len(page)
    return count


def xlsx_temp_file(read_factory: sessionmaker[Session], filters: LeadFilters) -> Path:
    """A temporary XLSX file of the export; the caller deletes it once sent."""
    with tempfile.NamedTemporaryFile(
        prefix="leadscore-export-", suffix=".xlsx", delete=False
    ) as handle:
        path = Path(handle.name)
    try:
        write_xlsx(read_factory, filters, path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path
