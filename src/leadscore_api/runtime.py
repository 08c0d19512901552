"""Process-wide behaviour of ``leadscore serve``: start-up tuning, and SIGHUP reloading the rules.

Python's cyclic garbage collector periodically walks every object that has lived long enough,
and a started service holds a lot of them: modules, compiled rulesets, SQLAlchemy's and
pydantic's caches. A full collection then stalls whichever request it lands on, for a time
that grows with everything the process loaded. ``gc.freeze()`` after start-up moves those
objects out of the collector's sight, so collections only walk what requests create
(figures in ``docs/performance.md``). The youngest generation is then collected after 10,000
net allocations instead of 700: nearly everything a request allocates is freed by reference
counting, so the default ran a collection every ten scored events to find almost nothing
(about 4 % of a batched event's CPU); at 10,000 a collection is rare and still finds the
cycles.

Only the server process does this: a library user's process, or a test run creating many
applications, keeps the collector's defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from leadscore_api.errors import LeadscoreError
from leadscore_api.service import lifecycle

log = logging.getLogger("leadscore")

#: Net allocations between two collections of the youngest generation (CPython's default: 700).
YOUNG_GENERATION_THRESHOLD = 10_000


@asynccontextmanager
async def freeze_startup_objects(_app: FastAPI) -> AsyncIterator[None]:
    """A lifespan hook: collect once, then freeze what start-up left alive."""
    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, thresholds[1], thresholds[2])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


@asynccontextmanager
async def reload_on_hangup(app: FastAPI) -> AsyncIterator[None]:
    """A lifespan hook: ``kill -HUP <pid>`` reloads the rules folder, like ``rules reload``.

    The reload runs in a thread; its outcome goes to the log: each file and what happened to
    it, or, when the folder does not validate, each ``FILE:LINE: problem`` and the fact that
    the active versions stay. Without this handler SIGHUP would end the process.
    """
    loop = asyncio.get_running_loop()
    hangup = getattr(signal, "SIGHUP", None)
    if hangup is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    tasks: set[asyncio.Task[None]] = set()

    def on_hangup() -> None:
        task = loop.create_task(_reload(app))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(hangup, on_hangup)
    try:
        yield
    finally:
        loop.remove_signal_handler(hangup)
        for task in list(tasks):
            with contextlib.suppress(Exception):
                await task


async def _reload(app: FastAPI) -> None:
    log.info("SIGHUP: reloading the rules folder")
    try:
        report, _job = await run_in_threadpool(
            lifecycle.reload,
            app.state.session_factory,
            app.state.registry,
            app.state.settings,
            lifecycle.Rescore(),
        )
    except LeadscoreError as exc:
        lines = [f"{e['field']}: {e['message']}" for e in exc.errors or []] or [exc.detail]
        log.error("SIGHUP: reload refused, the active versions stay:\n%s", "\n".join(lines))
        return
    except Exception:
        log.exception("SIGHUP: reload failed, the active versions stay")
        return
    for item in report.files:
        log.info("SIGHUP: %s: %s (%s v%d)", item.path, item.status, item.name, item.version)
