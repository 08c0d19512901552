"""A throwaway PostgreSQL cluster in a temporary folder, to stop and start under a running service.

The machine's shared PostgreSQL serves other work and must never be restarted; a cluster of our
own (``initdb`` and ``pg_ctl`` from the installed server binaries, on a free port) can be. As
root, ``initdb`` refuses to run, so the cluster runs as the ``postgres`` system user through
``runuser``. Durability is switched off (``fsync=off``): the cluster only lives for one run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from tests.server import free_port


class ClusterUnavailable(RuntimeError):
    """No PostgreSQL server binaries here, or no user they agree to run as."""


def server_bindir() -> Path:
    """The newest installed PostgreSQL server's ``bin`` folder (``initdb``, ``pg_ctl``)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise ClusterUnavailable("no PostgreSQL server binaries (initdb) found")


def _run_as() -> list[str]:
    """The prefix that runs a command as a user PostgreSQL accepts (not root)."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        raise ClusterUnavailable("running as root without runuser: initdb refuses root")
    return [runuser, "-u", "postgres", "--"]


class Cluster:
    """``with Cluster() as pg: pg.url ... pg.stop() ... pg.start()``."""

    def __init__(self, database: str = "soak") -> None:
        self.bindir = server_bindir()
        self.prefix = _run_as()
        self.database = database
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="leadscore-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgresql.log"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.database}"

    def _pg(self, *args: str) -> None:
        subprocess.run(
            [*self.prefix, *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )

    def create(self) -> Cluster:
        if self.prefix:
            shutil.chown(self.root, user="postgres")
        self._pg(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        self.start()
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        return self

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._pg(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.log),
            "-w",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` rolls back open transactions and closes every connection."""
        self._pg(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def is_up(self) -> bool:
        try:
            with psycopg.connect(
                f"host=127.0.0.1 port={self.port} user=postgres dbname={self.database}",
                connect_timeout=2,
            ):
                return True
        except psycopg.OperationalError:
            return False

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.SubprocessError):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Cluster:
        try:
            return self.create()
        except BaseException:
            self.destroy()
            raise

    def __exit__(self, *_exc: object) -> None:
        self.destroy()


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Call ``predicate()`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
