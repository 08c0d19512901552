"""Every table of the application on one ``Base.metadata``, for Alembic and schema checks."""

from __future__ import annotations

from sqlalchemy import MetaData

from leadscore_api.storage import (
    crm_models,
    dashboard_models,
    delivery_models,
    directory_models,
    lifecycle_models,
    models,
    privacy_models,
    report_models,
    snapshot_models,
)
from leadscore_api.storage.base import Base

#: The modules that declare tables; importing them registers their tables on ``Base.metadata``.
TABLE_MODULES = (
    models,
    delivery_models,
    directory_models,
    lifecycle_models,
    report_models,
    snapshot_models,
    dashboard_models,
    privacy_models,
    crm_models,
)


def all_tables() -> MetaData:
    return Base.metadata
