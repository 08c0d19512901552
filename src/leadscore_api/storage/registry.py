"""Every table of the application on one ``Base.metadata``, for Alembic and schema checks.

Subsystems keep their tables next to their code; importing them here (when installed) means
``alembic revision --autogenerate`` and the model/migration agreement test see them all.
"""

from __future__ import annotations

import importlib
import importlib.util

from sqlalchemy import MetaData

import leadscore_api.storage.models  # noqa: F401  (registers the core tables)
from leadscore_api.storage.base import Base

MODEL_MODULES = ("leadscore_api.delivery.models", "leadscore_api.ingest.models")


def load_all_models() -> MetaData:
    for name in MODEL_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)
    return Base.metadata
