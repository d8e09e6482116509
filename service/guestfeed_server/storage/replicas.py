"""Read replicas: which database serves a read, with staleness measured, not assumed.

`ReadRouter` holds the primary's `Database` and one per streaming replica
(GUESTFEED_REPLICA_DATABASE_URLS). For every replica a background loop reads
back the heartbeat the service writes on the primary (storage/heartbeat.py)
and keeps its state:

  * up: answering, and its data at most GUESTFEED_REPLICA_MAX_LAG_MS old;
  * lagging: answering but further behind (replay slow or paused);
  * down: failing (refused, timed out, no pool yet); checked again after
    an exponential backoff.

How old a replica's data is is bounded from above, never guessed: it holds
everything the primary committed before the last beat it shows, so its
staleness is at most the primary's clock now minus that beat. The router
keeps that bound ticking between checks (the primary's clock is read with
each round and advanced by the local monotonic clock), so a replica whose
replay stops loses its reads the moment the bound passes, not at the next
check.

Reads come in two kinds:

  * `read(work, budget)`: bounded staleness. An up replica within the bound,
    round robin, else the primary.
  * `read(work, budget, at_least=lsn)`: as fresh as the primary at `lsn`
    (a WAL position read on the primary first, see `fence`). An up replica
    that has replayed it, else the primary. First pages use this: their watch
    token promises every row below a horizon read on the primary.

A replica that fails a read (connection lost, timed out) is marked down and
the read runs again once on the primary, so stopping a replica loses no
request; a read cancelled by a recovery conflict runs again on the primary
without marking the replica down. Rollout writes, LISTEN, the guard,
comparisons, migrations and health never come here: they use the primary.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from ..domain.budget import Budget
from ..domain.errors import DeadlineExceeded, Unavailable
from ..settings import Settings
from ..telemetry import untraced
from ..telemetry.background import start_background, stop_background
from .database import Database, create_pool
from .heartbeat import read_primary, read_replica
from .horizon import Horizon, HorizonSpec, read_horizon
from .replica_state import (
    NOT_CHECKED,
    PRIMARY,
    VARIABLE,
    Replica,
    ReplicaState,
    ReplicaStatus,
    Route,
    cause,
    replica_names,
    settled,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Down replicas are tried again after 0.5 s, 1 s, 2 s, ... at most 30 s (±20%).
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
# A fenced read waits this long, in steps, for a replica to replay the
# primary's position before it goes to the primary instead: streaming
# replication is usually there within a millisecond or two.
FENCE_WAITS_S = (0.0, 0.001, 0.002, 0.004)

REPLAYED_SQL = "SELECT COALESCE(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)"
# Insert, not flush, position: an asynchronously committed row is visible on
# the primary before its WAL is flushed, and the fence must cover it too.
PRIMARY_LSN_SQL = "SELECT pg_current_wal_insert_lsn()::text"


class ReadRouter:
    """Chooses the database for each read; owns the replicas' pools and checks."""

    def __init__(
        self,
        primary: Database,
        settings: Settings,
        *,
        on_read: Callable[[str, Route], None] | None = None,
    ) -> None:
        self.primary = primary
        self._settings = settings
        cfg = settings.replicas
        self.max_lag_s = cfg.max_lag_s
        self._check_s = cfg.check_s
        self._heartbeat_s = cfg.heartbeat_s
        self._pool_max = cfg.pool_max
        names = replica_names(cfg.urls)
        self.replicas = [Replica(n, u) for n, u in zip(names, cfg.urls, strict=True)]
        self._on_read = on_read
        # The primary's clock as seconds since the epoch at local monotonic 0:
        # primary now = offset + time.monotonic(). None until first read.
        self._offset: float | None = None
        # Until start() has waited for the first checks: no line per change.
        self._starting = True
        # Set once every replica has been found up or down (start() waits for it).
        self._settled = asyncio.Event()
        self._beat_stale = False
        self._next = 0
        self._tasks: list[asyncio.Task[None]] = []
        # Reads by target (a replica's name or "primary"), and by (target, route).
        self.reads: collections.Counter[str] = collections.Counter()
        self.routes: collections.Counter[tuple[str, Route]] = collections.Counter()

    # -- lifecycle -------------------------------------------------------------

    async def start(self, *, wait_s: float) -> None:
        """Starts the checks, and waits up to `wait_s` until every replica is up or
        down, so a replica that answers takes reads from the first request on.
        Then logs each one's state once (a replica whose first checks still saw
        the last beat of before this start is not worth a warning)."""
        self._tasks.append(start_background(self._clock_loop(), "guestfeed-replica-clock"))
        for r in self.replicas:
            name = f"guestfeed-replica-{r.name}"
            self._tasks.append(start_background(self._replica_loop(r), name))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await self._settled.wait()
        self._starting = False
        for r in self.replicas:
            self._log_state(r)

    async def stop(self) -> None:
        """Stops the checks and closes the replicas' pools."""
        for task in self._tasks:
            await stop_background(task)
        self._tasks.clear()
        for r in self.replicas:
            if r.db is not None:
                db, r.db = r.db, None
                try:
                    async with asyncio.timeout(self._settings.shutdown_grace_s):
                        await db.close()
                except TimeoutError:
                    db.pool.terminate()

    # -- state -----------------------------------------------------------------

    def lag_s(self, r: Replica, now: float | None = None) -> float | None:
        """The upper bound on how old `r`'s data is, now (see the module docstring)."""
        if self._offset is None or r.beat is None:
            return None
        at = time.monotonic() if now is None else now
        return max(0.0, self._offset + at - r.beat.timestamp())

    def status(self) -> list[ReplicaStatus]:
        """Every replica's state and lag (health details, metrics)."""
        return [ReplicaStatus(r.name, r.state, self.lag_s(r), r.error) for r in self.replicas]

    def _eligible(self, r: Replica, now: float) -> bool:
        if r.state is not ReplicaState.UP or r.db is None:
            return False
        lag = self.lag_s(r, now)
        return lag is not None and lag <= self.max_lag_s

    def _set_state(self, r: Replica, state: ReplicaState) -> None:
        if state is not r.state:
            r.state = state
            self._log_state(r)
        if all(map(settled, self.replicas)):
            self._settled.set()

    def _log_state(self, r: Replica) -> None:
        """One line per change of state, with the lag or the cause."""
        if self._starting:
            return
        state = r.state
        lag = self.lag_s(r)
        lag_ms = None if lag is None else round(lag * 1000)
        extra = {"replica": r.name, "state": state.value, "lag_ms": lag_ms}
        if state is ReplicaState.UP:
            log.info("read replica %s up (lag %s ms): it takes reads", r.name, lag_ms, extra=extra)
        elif state is ReplicaState.LAGGING:
            log.warning(
                "read replica %s lagging (%s ms > GUESTFEED_REPLICA_MAX_LAG_MS %d): no reads "
                "until it catches up%s",
                r.name,
                lag_ms,
                round(self.max_lag_s * 1000),
                "" if r.standby else " (it is not in recovery: promoted, or not a replica)",
                extra=extra,
            )
        else:
            log.warning(
                "read replica %s down (%s): no reads; retrying in %.1f s",
                r.name,
                r.error,
                max(0.0, r.retry_at - time.monotonic()),
                extra=extra,
            )

    def _check_state(self, r: Replica) -> None:
        """up or lagging from the current bound (after a check, or at start)."""
        if r.state is ReplicaState.DOWN and r.error is not None:
            return
        lag = self.lag_s(r)
        ok = lag is not None and lag <= self.max_lag_s
        self._set_state(r, ReplicaState.UP if ok else ReplicaState.LAGGING)

    def _mark_down(self, r: Replica, exc: BaseException, *, from_check: bool) -> None:
        # A burst of failing requests counts once: the backoff grows per check.
        if r.state is ReplicaState.DOWN and not from_check:
            return
        first = r.error == NOT_CHECKED and not self._starting
        r.failures += 1
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (r.failures - 1))
        r.retry_at = time.monotonic() + delay * random.uniform(0.8, 1.2)
        r.error = cause(exc)
        if first:
            # Down from the start (its initial state): still worth one line.
            self._log_state(r)
        self._set_state(r, ReplicaState.DOWN)

    # -- checks ----------------------------------------------------------------

    async def _clock_loop(self) -> None:
        budget = Budget(min(self._settings.query_timeout_s, 2.0))
        while True:
            sent = time.monotonic()
            try:
                clock = await read_primary(self.primary, budget)
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as exc:
                # The last offset stands: the replicas' bounds keep growing
                # from their last beats, which is what a silent primary deserves.
                log.debug("reading the primary's clock failed: %r", exc)
            else:
                # The send time, not the receive time: the primary's clock is
                # then never behind, and the bound never too small.
                self._offset = clock.now.timestamp() - sent
                self._note_beat_age((clock.now - clock.beat_at).total_seconds())
            await asyncio.sleep(self._check_s)

    def _note_beat_age(self, age_s: float) -> None:
        stale = age_s > 4 * self._heartbeat_s
        if stale and not self._beat_stale:
            log.warning(
                "the replica heartbeat on the primary is %.1f s old: no replica of the service "
                "writes it, so every read replica looks behind and reads go to the primary",
                age_s,
            )
        elif self._beat_stale and not stale:
            log.info("the replica heartbeat on the primary advances again")
        self._beat_stale = stale

    async def _replica_loop(self, r: Replica) -> None:
        while True:
            wait = r.retry_at - time.monotonic()
            if r.state is ReplicaState.DOWN and wait > 0:
                await asyncio.sleep(wait)
            await self.check(r)
            await asyncio.sleep(self._check_s)

    async def check(self, r: Replica) -> None:
        """Reads `r`'s heartbeat (opening its pool first if need be) and updates its state."""
        budget = Budget(min(self._settings.query_timeout_s, 2.0))
        try:
            if r.db is None:
                r.db = await self._open(r)
            async with r.db.acquire(budget) as conn:
                beat, standby = await read_replica(conn, budget.seconds())
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as exc:
            self._mark_down(r, exc, from_check=True)
            return
        if r.standby and not standby:
            log.warning("read replica %s is not in recovery (promoted?)", r.name)
        r.beat, r.standby, r.error = beat, standby, None
        lag = self.lag_s(r)
        if lag is not None and lag <= self.max_lag_s:
            r.failures = 0
        self._check_state(r)

    async def _open(self, r: Replica) -> Database:
        size = self._pool_max or self._settings.pool_max_size
        # The connect timeout bounds each attempt; the checks retry with backoff.
        pool = await create_pool(r.dsn, self._settings, variable=VARIABLE, max_size=size)
        return Database(pool, self._settings.pool_mode, self._settings.limits.db_bulk_share(size))

    # -- reads -----------------------------------------------------------------

    def any_up(self) -> bool:
        """Whether some replica may take a fenced read right now."""
        return any(r.state is ReplicaState.UP and r.db is not None for r in self.replicas)

    def pick(self, *, fenced: bool = False) -> Replica | None:
        """The next replica, round robin: up and within the bound, or (fenced) up."""
        now = time.monotonic()
        n = len(self.replicas)
        for i in range(n):
            r = self.replicas[(self._next + i) % n]
            up = r.state is ReplicaState.UP and r.db is not None
            if up if fenced else self._eligible(r, now):
                self._next = (self._next + i + 1) % n
                return r
        return None

    async def fence(
        self, budget: Budget, horizon: HorizonSpec | None
    ) -> tuple[Horizon | None, str]:
        """On the primary: the horizon when asked for, then the WAL position after it.

        A replica that has replayed that position holds every row the primary
        had committed when the horizon was read.
        """
        with untraced():
            async with self.primary.acquire(budget) as conn:
                mark = await read_horizon(conn, horizon, budget.seconds()) if horizon else None
                lsn: str = await conn.fetchval(PRIMARY_LSN_SQL, timeout=budget.seconds())
        return mark, lsn

    async def read(
        self,
        work: Callable[[Database], Awaitable[T]],
        budget: Budget,
        *,
        at_least: str | None = None,
    ) -> T:
        """Runs `work` on a replica (see the module docstring), else on the primary.

        `work` must be a read that may run twice: once on a replica that fails
        it, once on the primary.
        """
        replica = self.pick(fenced=at_least is not None)
        if replica is None:
            return await self.on_primary(work, Route.NO_REPLICA)
        db = replica.db
        assert db is not None
        try:
            if at_least is not None and not await self._replayed(db, at_least, budget):
                return await self.on_primary(work, Route.FENCE)
            result = await work(db)
        except DeadlineExceeded:
            raise  # the caller's time is spent: nowhere to retry
        except Unavailable as exc:
            self._mark_down(replica, exc, from_check=False)
            return await self.on_primary(work, Route.RETRY)
        except asyncpg.TransactionRollbackError:
            # "canceling statement due to conflict with recovery": the replica
            # is fine, this statement lost to replay. The primary has no such conflict.
            return await self.on_primary(work, Route.RETRY)
        self._count(replica.name, Route.REPLICA)
        return result

    async def on_primary(self, work: Callable[[Database], Awaitable[T]], route: Route) -> T:
        """Runs `work` on the primary, counted under `route`."""
        self._count(PRIMARY, route)
        return await work(self.primary)

    async def _replayed(self, db: Database, lsn: str, budget: Budget) -> bool:
        with untraced():
            async with db.acquire(budget) as conn:
                for pause in FENCE_WAITS_S:
                    if pause:
                        await asyncio.sleep(pause)
                    if await conn.fetchval(REPLAYED_SQL, lsn, timeout=budget.seconds()):
                        return True
        return False

    def _count(self, target: str, route: Route) -> None:
        self.reads[target] += 1
        self.routes[target, route] += 1
        if self._on_read is not None:
            self._on_read(target, route)
