"""Leads in and out of spreadsheets: ``POST /v1/leads/import``, ``GET /v1/leads/export``.

Listed before the leads router in ``api/routers.py``: ``/v1/leads/export`` would otherwise be
read as the lead with id ``export``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker
from starlette.background import BackgroundTask

from leadscore_api.api.deps import LeadsReader, LeadsWriter, RegistryDep, SessionFactoryDep
from leadscore_api.api.leads import LeadFiltersDep
from leadscore_api.api.problems import problem_responses
from leadscore_api.service import lead_export, lead_import

router = APIRouter(tags=["spreadsheets"])


class RowError(BaseModel):
    row: int = Field(description="The row number as the spreadsheet shows it (the header is 1).")
    column: str | None = Field(description="The column's header, or null for the whole row.")
    message: str


class ImportOut(BaseModel):
    """What the check (and the import, unless it was a dry run) found and did."""

    ok: bool = Field(description="True when no row has a problem.")
    dry_run: bool
    format: Literal["csv", "xlsx"]
    columns: dict[str, str] = Field(description="Each used column's header → lead attribute.")
    ignored_columns: list[str] = Field(description="Headers not mapped to anything.")
    rows: int = Field(description="Data rows read (blank rows are skipped).")
    valid_rows: int
    error_count: int
    errors: list[RowError] = Field(description=f"The first {lead_import.MAX_REPORTED_ERRORS}.")
    imported: int = Field(description="Rows stored and scored now.")
    unchanged: int = Field(description="Rows imported before (same content): nothing to do.")
    rejected: int
    erased: int = Field(
        default=0,
        description="Rows about people erased before: skipped, an import does not bring them back.",
    )
    warnings: list[RowError] = Field(
        description="Rows imported with a remark (the first 100), e.g. an email and an"
        " external id that belong to two different leads: the row went to the email's lead."
    )

    @classmethod
    def of(cls, report: lead_import.ImportReport) -> ImportOut:
        return cls(
            ok=report.ok,
            dry_run=report.dry_run,
            format=report.format,
            columns=report.columns,
            ignored_columns=report.ignored_columns,
            rows=report.rows,
            valid_rows=report.valid_rows,
            error_count=report.error_count,
            errors=[RowError(row=e.row, column=e.column, message=e.message) for e in report.errors],
            imported=report.imported,
            unchanged=report.unchanged,
            rejected=report.rejected,
            erased=report.erased,
            warnings=[RowError(row=r, column=None, message=m) for r, m in report.warnings],
        )


def _spool(upload: UploadFile) -> Path:
    """The upload on disk: both passes read it again, and XLSX needs a seekable file."""
    suffix = Path(upload.filename or "").suffix[:10]
    with tempfile.NamedTemporaryFile(
        prefix="leadscore-import-", suffix=suffix, delete=False
    ) as handle:
        upload.file.seek(0)
        shutil.copyfileobj(upload.file, handle, 1024 * 1024)
    return Path(handle.name)


@router.post(
    "/v1/leads/import",
    response_model=ImportOut,
    summary="Import leads from a CSV or XLSX file (dry run first)",
    responses=problem_responses(400, 401, 403, 413, 422, 503),
)
def import_leads(
    _principal: LeadsWriter,
    session_factory: SessionFactoryDep,
    registry: RegistryDep,
    file: Annotated[UploadFile, File(description="The CSV (UTF-8, `,` or `;`) or XLSX file.")],
    column_map: Annotated[
        str | None,
        Form(
            max_length=20_000,
            description='JSON: column header → lead attribute, e.g. `{"Ruolo": "role",'
            ' "Note": null}`; merged over the default map of Italian and English headers.',
        ),
    ] = None,
    dry_run: Annotated[
        bool, Query(description="Only check the file and report each row's problems.")
    ] = False,
    sheet: Annotated[
        str | None, Query(max_length=200, description="XLSX: the sheet (default: the first).")
    ] = None,
    encoding: Annotated[
        str, Query(max_length=40, description="CSV: the text encoding (e.g. cp1252).")
    ] = "utf-8-sig",
) -> ImportOut:
    """Every row is checked first; if any has a problem nothing is imported (422 listing them).

    Each row becomes a `lead.imported` event with the row's attributes, so the lead is scored,
    routed and given a history like any other; its id is a hash of the row's content, so
    importing the same file again changes nothing (`unchanged`).
    """
    options = lead_import.ImportOptions(
        column_map=lead_import.parse_column_map(column_map),
        sheet=sheet,
        encoding=encoding,
        filename=upload_name(file),
    )
    path = _spool(file)
    try:
        report = lead_import.import_file(session_factory, registry, path, options, dry_run=dry_run)
    finally:
        path.unlink(missing_ok=True)
    return ImportOut.of(report)


def upload_name(upload: UploadFile) -> str:
    return Path(upload.filename or "upload").name[:200]


@router.get(
    "/v1/leads/export",
    summary="Scored leads as a CSV or XLSX file (the filters of the list)",
    responses={
        200: {
            "description": "The file: CSV (streamed) or XLSX.",
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                lead_export.MEDIA_TYPES["xlsx"]: {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **problem_responses(400, 401, 403, 422),
    },
    response_class=StreamingResponse,
    response_model=None,
)
def export_leads(
    _principal: LeadsReader,
    request: Request,
    filters: LeadFiltersDep,
    format: Annotated[Literal["csv", "xlsx"], Query(description="csv or xlsx.")] = "csv",
) -> StreamingResponse | FileResponse:
    """Letter, score, tier, stage, owner, next action and due time, then the attributes.

    Text cells that a spreadsheet would run as a formula (starting with = + - @) get a leading
    apostrophe. The CSV is streamed page by page; the XLSX is written to a temporary file first.
    """
    read_factory: sessionmaker[Session] = request.app.state.read_session_factory
    if format == "csv":
        return StreamingResponse(
            lead_export.csv_chunks(read_factory, filters),
            media_type=lead_export.MEDIA_TYPES["csv"],
            headers={"Content-Disposition": 'attachment; filename="leads.csv"'},
        )
    path = lead_export.xlsx_temp_file(read_factory, filters)
    return FileResponse(
        path,
        media_type=lead_export.MEDIA_TYPES["xlsx"],
        filename="leads.xlsx",
        background=BackgroundTask(path.unlink, missing_ok=True),
    )
