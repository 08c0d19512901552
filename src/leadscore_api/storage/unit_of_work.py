"""The unit of work: one transaction per piece of work, run again when a concurrent writer won.

A piece of work is usually one request; concurrent ``POST /v1/events`` requests share one
(``service/group_commit.py``). Either way each request's effects are atomic and durable before
it is answered.

Every write of the service goes through :func:`in_transaction`, so every write gets the same
answer to contention. Races are expected when several replicas create the same new leads at
once (an identity's unique key decides who wins) and on PostgreSQL's serialization failures and
deadlocks; the loser waits a little, with jitter so that two losers do not collide again, and
finds the winner's rows. Running out of attempts is a 503 with Retry-After, never a 500:
nothing was written and the client can send the request again.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from leadscore_api.errors import Unavailable

log = logging.getLogger("leadscore.storage")

T = TypeVar("T")
P = ParamSpec("P")

#: PostgreSQL SQLSTATEs that mean "run the transaction again": serialization failure, deadlock.
_RETRY_SQLSTATES = frozenset({"40001", "40P01"})
DEFAULT_ATTEMPTS = 10


class RetryTransaction(Exception):
    """A concurrent transaction changed rows this one relied on; run the work again."""


class Contention(Unavailable):
    """Concurrent writers kept winning; the request wrote nothing and may be sent again."""

    problem_type = "contention"
    title = "Too much contention"

    def __init__(self, attempts: int) -> None:
        super().__init__(
            f"the request lost {attempts} races with concurrent writers;"
            " nothing was written, send the request again",
            headers={"Retry-After": "1"},
        )


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, RetryTransaction | IntegrityError | StaleDataError):
        return True
    if isinstance(exc, OperationalError):
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if sqlstate in _RETRY_SQLSTATES:
            return True
        return "database is locked" in str(exc.orig)
    return False


def in_transaction(
    session_factory: sessionmaker[Session],
    work: Callable[[Session], T],
    *,
    attempts: int = DEFAULT_ATTEMPTS,
) -> T:
    """Run ``work`` in one transaction, again from scratch while a concurrent writer wins."""
    for attempt in range(1, attempts + 1):
        try:
            with session_factory() as session, session.begin():
                return work(session)
        except Exception as exc:
            if not is_retryable(exc):
                raise
            if attempt >= attempts:
                raise Contention(attempts) from exc
            log.info("retrying a transaction after %s (attempt %d)", type(exc).__name__, attempt)
            time.sleep(random.uniform(0.0, min(1.0, 0.01 * 2**attempt)))
    raise AssertionError("unreachable")


def transactional(
    func: Callable[Concatenate[Session, P], T],
) -> Callable[Concatenate[sessionmaker[Session], P], T]:
    """A service command written against a session, called with a session factory.

    The command runs in :func:`in_transaction`, so callers (routes, CLI) never open, commit or
    retry a transaction themselves.
    """

    @functools.wraps(func)
    def run(session_factory: sessionmaker[Session], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return in_transaction(session_factory, lambda session: func(session, *args, **kwargs))

    return run
