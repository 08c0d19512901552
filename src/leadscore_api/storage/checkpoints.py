"""Background checkpoints of SQLite's write-ahead log, off the request path.

In WAL mode a commit appends pages to the ``-wal`` file; a *checkpoint* copies them back into
the database file and syncs it. By default SQLite runs one inside whichever commit pushes the
log past 1,000 pages, so that one request pays for everybody's writes (several times the
cost of its own commit; figures in ``docs/performance.md``).

While the service runs, a thread of its own checkpoints every ``interval`` seconds instead
(``PASSIVE``: it never blocks writers or readers, and the sqlite3 module releases the GIL
while it works). Request connections keep an automatic checkpoint only as a safety net at
:data:`SAFETY_NET_PAGES`, for when the thread cannot keep up or is not running (command-line
tools, several processes on one file).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass

from sqlalchemy import Engine

from leadscore_api.storage.db import execute_on_connect

log = logging.getLogger("leadscore.storage")

#: Pages (4 KiB) the log may grow to before a commit checkpoints it anyway: ~40 MiB.
SAFETY_NET_PAGES = 10_000


@dataclass(frozen=True)
class CheckpointResult:
    """What ``PRAGMA wal_checkpoint`` answered: busy flag, frames in the log, frames copied."""

    busy: bool
    log_frames: int
    checkpointed_frames: int


class WalCheckpointer:
    """Checkpoints one SQLite database file from a daemon thread while started."""

    def __init__(self, database_path: str, *, interval: float = 0.5) -> None:
        self.database_path = database_path
        self.interval = interval
        self.last: CheckpointResult | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_engine(cls, engine: Engine, *, interval: float = 0.5) -> WalCheckpointer | None:
        """A checkpointer for ``engine``'s file, or None when it is not a SQLite file.

        From now on the engine's new connections checkpoint by themselves only past the
        safety net; call this before the engine opens its first connection.
        """
        if engine.dialect.name != "sqlite":
            return None
        path = engine.url.database
        if not path or path == ":memory:" or path.startswith("file:"):
            return None

        execute_on_connect(engine, f"PRAGMA wal_autocheckpoint={SAFETY_NET_PAGES}")
        return cls(path, interval=interval)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="leadscore-wal-checkpoint", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after one last checkpoint."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout=30)

    def checkpoint(self, connection: sqlite3.Connection) -> CheckpointResult:
        row = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.last = CheckpointResult(bool(row[0]), int(row[1]), int(row[2]))
        return self.last

    def _run(self) -> None:
        connection = sqlite3.connect(self.database_path, isolation_level=None, timeout=5)
        try:
            while True:
                stopping = self._stop.wait(self.interval)
                try:
                    self.checkpoint(connection)
                except sqlite3.Error as exc:  # the file is busy or gone: try again later
                    log.warning("WAL checkpoint failed: %s", exc)
                if stopping:
                    return
        finally:
            connection.close()
