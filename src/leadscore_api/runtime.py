"""Process-wide tuning for ``leadscore serve``, applied once the application has started.

Python's cyclic garbage collector periodically walks every object that has lived long enough,
and a started service holds a lot of them: modules, compiled rulesets, SQLAlchemy's and
pydantic's caches. A full collection then stalls whichever request it lands on, for a time
that grows with everything the process loaded. ``gc.freeze()`` after start-up moves those
objects out of the collector's sight, so collections only walk what requests create
(figures in ``docs/performance.md``).

Only the server process does this: a library user's process, or a test run creating many
applications, keeps the collector's defaults.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI


@asynccontextmanager
async def freeze_startup_objects(_app: FastAPI) -> AsyncIterator[None]:
    """A lifespan hook: collect once, then freeze what start-up left alive."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
