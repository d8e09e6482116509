"""The replica heartbeat: a clock the service writes on the primary and reads on replicas.

`now() - pg_last_xact_replay_timestamp()` on a replica is the age of the
last transaction it replayed, which on an idle primary grows without any lag
at all. So the service writes its own transaction: `guestfeed.heartbeat`
(one row, migration 0010) gets the primary's `clock_timestamp()` about every
GUESTFEED_REPLICA_HEARTBEAT_MS. A replica that shows `beat_at = B` has
replayed everything the primary committed before that heartbeat committed,
so its data is at most `primary's now - B` old, busy or idle.

One writer per cluster is enough and keeps the WAL small: each replica of
the service runs a `HeartbeatWriter`, and the one that holds a session-level
advisory lock on the primary writes; the others keep trying the lock, so a
writer that dies (its session ends, the lock with it) is replaced within a
beat or two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from typing import NamedTuple

import asyncpg

from ..domain.budget import Budget
from ..telemetry.background import start_background, stop_background
from .connect import CONNECT_ERRORS
from .database import Database
from .pgtypes import Conn

log = logging.getLogger(__name__)

# "gfbeat": apart from migrate's lock key.
LOCK_KEY = 0x6766_6265_6174
APPLICATION_NAME = "guestfeed-heartbeat"

WRITE_SQL = "UPDATE guestfeed.heartbeat SET beat_at = clock_timestamp(), writer = $1 WHERE id = 1"
# On the primary: its clock and the last beat, one round trip.
PRIMARY_SQL = "SELECT clock_timestamp() AS now, beat_at FROM guestfeed.heartbeat WHERE id = 1"
# On a replica: the last beat it replayed, and whether it is a replica at all
# (a promoted one stops receiving beats, and its lag then grows by itself).
REPLICA_SQL = "SELECT beat_at, pg_is_in_recovery() AS standby FROM guestfeed.heartbeat WHERE id = 1"

# After a failed write or connection, wait this many beats before trying again.
_RETRY_BEATS = 4


class PrimaryClock(NamedTuple):
    """The primary's clock and its last beat, read together."""

    now: datetime
    beat_at: datetime


async def read_primary(db: Database, budget: Budget) -> PrimaryClock:
    """The primary's `clock_timestamp()` and the heartbeat row.

    Raises:
        Unavailable, DeadlineExceeded: the primary did not answer.
    """
    async with db.acquire(budget) as conn:
        row = await conn.fetchrow(PRIMARY_SQL, timeout=budget.seconds())
    if row is None:
        # Migration 0010 inserts the row; only a hand-edited table lacks it.
        raise LookupError("guestfeed.heartbeat has no row; run `guestfeed migrate`")
    return PrimaryClock(row["now"], row["beat_at"])


async def read_replica(conn: Conn, timeout: float) -> tuple[datetime, bool]:
    """The beat a replica has replayed, and whether it is still in recovery."""
    row = await conn.fetchrow(REPLICA_SQL, timeout=timeout)
    if row is None:
        raise LookupError("guestfeed.heartbeat has no row on the replica")
    return row["beat_at"], bool(row["standby"])


class HeartbeatWriter:
    """Writes the heartbeat while this process holds the cluster's writer lock.

    `session_dsn` is a URL with a real session (the direct URL, or the main
    one in session mode): the lock lives in that session. Without one (a
    transaction pooler and no direct URL) there is no lock to hold, and every
    replica of the service writes through the pool: one row, so the cost is
    one small UPDATE per beat per replica.
    """

    def __init__(
        self,
        primary: Database,
        session_dsn: str | None,
        *,
        writer: str,
        interval_s: float,
        connect_timeout_s: float,
        query_timeout_s: float,
    ) -> None:
        self._primary = primary
        self._dsn = session_dsn
        self._writer = writer
        self._interval = interval_s
        self._connect_timeout = connect_timeout_s
        # A beat that cannot be written within a couple of intervals is late anyway.
        self._timeout = min(query_timeout_s, max(2 * interval_s, 1.0))
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        # True while this process holds the lock and writes.
        self.leading = False
        self.beats = 0
        self._failing: str | None = None

    def start(self) -> None:
        """Starts the write loop in the background."""
        self._task = start_background(self._run(), "guestfeed-heartbeat")

    async def stop(self) -> None:
        """Stops writing; closing the session releases the lock for another replica."""
        await stop_background(self._task)
        self._task = None
        await self._drop()

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.beat()
                pause = self._interval
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as exc:
                self._failed(exc)
                await self._drop()
                pause = self._interval * _RETRY_BEATS
            # Every `interval` from the start of the last beat, not after it.
            await asyncio.sleep(max(0.0, pause - (time.monotonic() - started)))

    async def beat(self) -> None:
        """One step: take the lock if free, and write if held (or if there is no lock)."""
        if self._dsn is None:
            budget = Budget(self._timeout)
            async with self._primary.acquire(budget) as conn:
                await conn.execute(WRITE_SQL, self._writer, timeout=budget.seconds())
            self._wrote()
            return
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(
                self._dsn,
                timeout=self._connect_timeout,
                server_settings={"application_name": APPLICATION_NAME},
            )
            self.leading = False
        if not self.leading:
            got = await self._conn.fetchval(
                "SELECT pg_try_advisory_lock($1)", LOCK_KEY, timeout=self._timeout
            )
            if not got:
                return
            self.leading = True
            log.info("writing the replica heartbeat for the cluster (every %g s)", self._interval)
        await self._conn.execute(WRITE_SQL, self._writer, timeout=self._timeout)
        self._wrote()

    def _wrote(self) -> None:
        self.beats += 1
        if self._failing is not None:
            log.info("replica heartbeat written again")
            self._failing = None

    def _failed(self, exc: Exception) -> None:
        cause = (
            f"the server said: {exc}"
            if isinstance(exc, asyncpg.PostgresError)
            else type(exc).__name__
        )
        if cause != self._failing:
            # Once per cause: a primary outage must not log twice a second.
            log.warning(
                "cannot write the replica heartbeat (%s); replicas look more and more "
                "behind and lose their reads until some replica of the service writes it%s",
                cause,
                " (the role needs UPDATE on guestfeed.heartbeat)"
                if isinstance(exc, asyncpg.InsufficientPrivilegeError)
                else "",
            )
            self._failing = cause
        self.leading = False

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self.leading = False
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(*CONNECT_ERRORS, asyncio.TimeoutError):
                # The lock goes with the session; a hung close must not hold up shutdown.
                async with asyncio.timeout(1.0):
                    await conn.close()
            if not conn.is_closed():
                conn.terminate()
