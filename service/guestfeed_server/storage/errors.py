"""Driver errors in the domain's terms: the only place that knows asyncpg's exceptions.

Every database call runs inside `Database.acquire`, which hands what it
raises to `translate`. A connection-level failure (the request was fine, the
database was not) becomes Unavailable; running out of time becomes
DeadlineExceeded when the caller's deadline is spent, else Unavailable.
Anything else is left alone: above storage it is a bug (INTERNAL).
"""

from __future__ import annotations

import asyncpg

from ..domain import errors
from ..domain.budget import Budget

# Connection-level failures: the request was fine, the database was not.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InterfaceError,
    # Class 57 (admin/crash shutdown, database dropped, idle timeout): the
    # server ended the session. QueryCanceledError, also class 57, is a
    # timeout and is classified before this tuple is consulted.
    asyncpg.exceptions.OperatorInterventionError,
    # A pooled connection whose backend was just killed can still look idle;
    # asyncpg then refuses to reuse it mid-error ("cannot switch to state").
    # The pool discards it on release, so a retry gets a fresh connection.
    asyncpg.exceptions.InternalClientError,
)


def _refused_connection(exc: BaseException) -> bool:
    # Bare SQLSTATE 55000 (not its subclasses such as lock_not_available) is
    # what a (re)connect gets while the database has ALLOW_CONNECTIONS false;
    # a read-only service's SELECTs never raise it otherwise.
    return (
        type(exc) is asyncpg.exceptions.ObjectNotInPrerequisiteStateError
        and exc.sqlstate == "55000"
    )


def translate(exc: BaseException, budget: Budget) -> errors.GuestFeedError | None:
    """The domain error for a database failure, or None when it is a bug."""
    if isinstance(exc, errors.GuestFeedError):
        return exc
    if isinstance(exc, TimeoutError | asyncpg.exceptions.QueryCanceledError):
        if budget.caller_expired():
            return errors.DeadlineExceeded("the request's deadline passed before it finished")
        return errors.Unavailable(
            "the database did not answer in time; retry with backoff", "DATABASE_TIMEOUT"
        )
    if isinstance(exc, _UNAVAILABLE) or _refused_connection(exc):
        return errors.Unavailable(
            "the database is unreachable; retry with backoff", "DATABASE_UNAVAILABLE"
        )
    return None
