"""A read replica's state as the router keeps it, and how it is named and explained."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ..domain.budget import Budget
from ..domain.errors import GuestFeedError
from ..settings import StartupError
from .connect import where
from .database import Database
from .errors import translate

# The reads metric's target for the primary (replicas go by their names).
PRIMARY = "primary"
VARIABLE = "GUESTFEED_REPLICA_DATABASE_URLS"
NOT_CHECKED = "not checked yet"


class ReplicaState(enum.Enum):
    """Whether a replica takes reads (storage/replicas.py)."""

    UP = "up"
    LAGGING = "lagging"
    DOWN = "down"


class Route(enum.Enum):
    """Why a read went where it went (the `guestfeed.db.route` of the reads metric)."""

    # A replica served it.
    REPLICA = "replica"
    # No replica was up and within the bound.
    NO_REPLICA = "no_replica"
    # No up replica had replayed the primary's position in time.
    FENCE = "fence"
    # A replica failed it; the primary served it again.
    RETRY = "retry"


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """One replica as health details, logs and metrics show it."""

    name: str
    state: ReplicaState
    # Upper bound on how old its data is; None before the first beat is seen.
    lag_s: float | None
    error: str | None


@dataclass(eq=False)
class Replica:
    """A replica's pool and what the checks found."""

    name: str
    dsn: str
    db: Database | None = None
    state: ReplicaState = ReplicaState.DOWN
    # The last beat seen on it (the primary's clock), and whether it is a standby.
    beat: datetime | None = None
    standby: bool = True
    failures: int = 0
    retry_at: float = 0.0
    error: str | None = NOT_CHECKED


def replica_names(urls: Sequence[str]) -> list[str]:
    """host:port/database of each URL (never a password), made unique by position."""
    names = [where(u) for u in urls]
    return [n if names.count(n) == 1 else f"{n}#{i + 1}" for i, n in enumerate(names)]


def settled(r: Replica) -> bool:
    """Up, or down for a known cause (what start-up waits for)."""
    return r.state is ReplicaState.UP or (r.state is ReplicaState.DOWN and r.error != NOT_CHECKED)


def cause(exc: BaseException) -> str:
    """A short reason for logs and health details (never a URL's password)."""
    if isinstance(exc, StartupError):
        # create_pool's one line: the variable, host:port/database and the cause.
        return str(exc).removeprefix(f"{VARIABLE}: ")
    if isinstance(exc, GuestFeedError):
        return exc.reason
    if isinstance(exc, Exception) and (translated := translate(exc, Budget(1.0))) is not None:
        return translated.reason
    if isinstance(exc, asyncpg.PostgresError):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__
