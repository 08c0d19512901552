"""Engine and session factory, with the settings each backend needs to be safe under load.

SQLite allows one writer at a time; a deferred ``BEGIN`` that later writes can fail with
"database is locked" in the middle of a request instead of waiting. Every transaction therefore
starts with ``BEGIN IMMEDIATE`` (SQLAlchemy's documented pysqlite recipe), which takes the write
lock up front and waits up to the busy timeout; WAL lets readers proceed meanwhile. On
PostgreSQL concurrent writers are serialised per lead with ``SELECT ... FOR UPDATE`` instead.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from leadscore_api import json_codec
from leadscore_api.errors import Unavailable

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Execution option marking a connection that only reads (a deferred BEGIN on SQLite).
READ_ONLY_OPTION = "leadscore_read_only"
_HOLDS_WRITER = "leadscore_holds_writer_lock"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url`` with per-backend connection settings."""
    kwargs.setdefault("json_serializer", json_codec.dumps)
    kwargs.setdefault("json_deserializer", json_codec.loads)
    # A statement's parameters hold emails and payloads: never in an error message or a log.
    kwargs.setdefault("hide_parameters", True)
    if is_sqlite(url):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            **kwargs,
        )
        _configure_sqlite(engine)
        return engine
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 30)
    kwargs.setdefault("pool_pre_ping", True)
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "postgresql":
        _configure_postgresql(engine)
    return engine


def _configure_postgresql(engine: Engine) -> None:
    # The driver prepares statements it sees often, and PostgreSQL then settles on a generic
    # plan. A plan fixed while the tables were empty (a new deployment, a test database) keeps
    # scanning ``events`` sequentially for a lookup by id until autovacuum happens to analyze
    # it, an order of magnitude slower. Our statements are short lookups on keys, so
    # planning each execution costs little and is always right.
    # Committed, or the driver's implicit transaction would roll the setting back.
    execute_on_connect(engine, "SET plan_cache_mode = force_custom_plan", commit=True)


def execute_on_connect(engine: Engine, *statements: str, commit: bool = False) -> None:
    """Run ``statements`` on every new driver connection of ``engine`` (session settings)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            for statement in statements:
                cursor.execute(statement)
        finally:
            cursor.close()
        if commit:
            dbapi_connection.commit()


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see module docstring).
        dbapi_connection.isolation_level = None

    execute_on_connect(
        engine,
        "PRAGMA journal_mode=WAL",
        "PRAGMA synchronous=NORMAL",
        f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
        "PRAGMA foreign_keys=ON",
    )

    # Threads of one process queue on this lock for the write transaction instead of polling
    # SQLite's busy handler (which sleeps in growing steps and makes tail latency explode
    # under load); other processes are still kept out by BEGIN IMMEDIATE and the busy timeout.
    writer = threading.Lock()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        if connection.get_execution_options().get(READ_ONLY_OPTION):
            connection.exec_driver_sql("BEGIN")
            return
        writer.acquire()
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            writer.release()
            raise
        connection.info[_HOLDS_WRITER] = True

    def _release(connection: Any) -> None:
        if connection.info.pop(_HOLDS_WRITER, False):
            writer.release()

    event.listen(engine, "commit", _release)
    event.listen(engine, "rollback", _release)


def make_session_factory(engine: Engine, *, read_only: bool = False) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit (responses are built after it).

    ``read_only`` sessions start a deferred transaction on SQLite so that reads never wait for
    the write lock (with WAL they see the last committed state); elsewhere they are ordinary.
    """
    bind = engine.execution_options(**{READ_ONLY_OPTION: True}) if read_only else engine
    return sessionmaker(bind=bind, expire_on_commit=False)


def database_problem(session_factory: sessionmaker[Session]) -> str | None:
    """Why the database cannot be used now, or None when it answers (for ``/readyz``)."""
    try:
        with session_factory() as session:
            session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return f"database unreachable: {type(exc).__name__}"
    return None


#: How long a client should wait before sending again while the database is away: a restart
#: or a fail-over takes seconds.
DATABASE_RETRY_AFTER_SECONDS = 2
#: PostgreSQL SQLSTATE classes that mean "the server cannot serve you now": 08 connection
#: exception, 53 insufficient resources (too many connections), 57P0x operator intervention
#: (shutting down, crash recovery, starting up).
_UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "53", "57P0")
#: SQLite's messages for a database it cannot reach or write now.
_SQLITE_UNAVAILABLE = ("database is locked", "unable to open database file", "disk i/o error")


class DatabaseUnavailable(Unavailable):
    """The database cannot be reached now (down, restarting, connection lost).

    Nothing was committed for the request, and events are idempotent on ``id``: the client sends
    the same request again after ``Retry-After``. A replica recovers by itself once the
    database is back (connections are checked before use, ``pool_pre_ping``).
    """

    problem_type = "database-unavailable"
    title = "Database unavailable"

    def __init__(self) -> None:
        super().__init__(
            "the database cannot be reached now; nothing was written, send the request again",
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database is away rather than that the statement is wrong.

    A lost or refused connection has no SQLSTATE on psycopg; a server shutting down, starting
    up or out of connections has one of the classes above.
    """
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(exc, InterfaceError):
        return True
    if not isinstance(exc, OperationalError):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate is not None:
        return str(sqlstate).startswith(_UNAVAILABLE_SQLSTATE_PREFIXES)
    return exc.orig is not None and (
        type(exc.orig).__module__.startswith("psycopg")
        or any(text in str(exc.orig).lower() for text in _SQLITE_UNAVAILABLE)
    )
