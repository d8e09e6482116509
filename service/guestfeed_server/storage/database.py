"""The database handle every reader shares: one asyncpg pool, fair, translating errors.

`Database` is the only way into PostgreSQL for request work and background
jobs alike (stores, rollout admin, health, the SMS job, comparisons): each
borrows through `acquire(budget)`, first come first served, and whatever the
driver raises in there leaves as a domain error (`storage.errors`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from ..domain.budget import Budget, Lane
from ..domain.errors import GuestFeedError
from ..settings import PoolMode, Settings
from ..telemetry import untraced
from .connect import CONNECT_ERRORS, connect_failure
from .errors import translate

log = logging.getLogger(__name__)


class PooledConnection(asyncpg.Connection):
    """A pool connection that is released without a reset query.

    asyncpg's default release sends `pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL` to the server: a round trip on every RPC, before
    its response is sent. The service leaves none of that state on pool
    connections: the only session settings are the planner's, SET when the
    connection opens and meant to last; it never LISTENs on them (the rollout
    listener has a connection of its own) or opens a cursor outside a
    transaction, and `migrate` releases its advisory lock itself. An open
    transaction is still rolled back on release: asyncpg does that apart from
    this query (tested in test_db_pool.py).
    """

    def get_reset_query(self) -> str:
        """No reset query (see the class docstring)."""
        return ""


# Pages are index walks of a few hundred rows. A parallel plan or JIT
# compilation costs milliseconds to start, more than the query: PostgreSQL
# picks them from row estimates that a LIMIT makes meaningless, so pages run
# without both. Not as startup parameters: PgBouncer and Supavisor refuse
# those ("unsupported startup parameter"). In session mode they are SET once
# per connection, which a session pooler keeps with the session. In
# transaction mode a session SET would leak to whichever client gets that
# server connection next; there pages are read through functions whose own
# SET clauses apply them (storage/base.py, `SqlFeedStore.function_ddl`).
SESSION_PLANNER_SQL = "SET jit = off; SET max_parallel_workers_per_gather = 0"


async def _session_setup(conn: asyncpg.Connection) -> None:
    # Part of opening a connection, not of whichever request caused it.
    with untraced():
        await conn.execute(SESSION_PLANNER_SQL)


async def create_pool(
    dsn: str,
    settings: Settings,
    *,
    variable: str = "GUESTFEED_DATABASE_URL",
    max_size: int | None = None,
) -> asyncpg.Pool:
    """One pool for the process; sizes and timeouts come from validated settings.

    A read replica's pool (storage/replicas.py) names its own `variable` in
    errors and may have its own `max_size`.

    Raises:
        StartupError: the database cannot be reached (one line, no URL secrets).
    """
    per_transaction = settings.pool_mode is PoolMode.TRANSACTION
    size = settings.pool_max_size if max_size is None else max_size
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min(settings.pool_min_size, size),
            max_size=size,
            timeout=settings.connect_timeout_s,
            # Calls pass their own (shorter) budget; this default also bounds
            # asyncpg's cancel of a timed-out or cancelled query, sent on a new
            # connection that an unreachable server would leave hanging. Past
            # it the connection is dropped, so the pool slot and a shutdown never
            # wait on it (tests/test_deadlines.py). Never None.
            command_timeout=settings.query_timeout_s,
            connection_class=PooledConnection,
            server_settings={"application_name": "guestfeed"},
            init=None if per_transaction else _session_setup,
            # Named prepared statements live in a server session, which a
            # transaction pooler hands to other clients between transactions:
            # there, every statement is unnamed (prepared and run in one go).
            statement_cache_size=0 if per_transaction else 100,
        )
    except CONNECT_ERRORS as exc:
        raise connect_failure(variable, dsn, exc) from None
    assert pool is not None
    return pool


class FairGate:
    """Admits at most `size` holders at a time, waiters strictly in arrival order.

    asyncio.Queue (asyncpg's pool queue) lets a newcomer take an item that
    was just put back for a woken waiter, who then queues again at the end:
    under load some requests lose that race over and over (figures in
    docs/performance.md). Here a freed slot is handed to the first waiter.
    """

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_enter(self) -> bool:
        """Takes a slot if one is free (then nobody waits: `exit` hands slots over)."""
        if self._free > 0:
            self._free -= 1
            return True
        return False

    async def enter(self) -> None:
        """Waits for a slot in arrival order (cancel it to give up)."""
        if self.try_enter():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.exit()  # handed a slot just as it gave up: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def exit(self) -> None:
        """Frees a slot, handing it to the first waiter if there is one."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class Database:
    """The pool as everything borrows from it: fair under load, cheap when idle,
    counting the requests that wait (a metric asyncpg does not report), and
    translating driver errors into domain errors.
    """

    def __init__(
        self, pool: asyncpg.Pool, mode: PoolMode = PoolMode.SESSION, bulk_share: int | None = None
    ) -> None:
        self.pool = pool
        self.mode = mode
        self.waiting = 0
        self._gate = FairGate(pool.get_max_size())
        # BULK work (streams, shadow reads, comparisons) first passes a gate of
        # its own: at most `bulk_share` connections, so the rest of the pool
        # stays for short calls however many streams are being read.
        self.bulk_share = min(bulk_share or pool.get_max_size(), pool.get_max_size())
        self._bulk = FairGate(self.bulk_share)
        self._releasing: set[asyncio.Task[None]] = set()
        # Made once: entering `untraced()` for every release is measurable.
        with untraced():
            self._untraced = contextvars.copy_context()

    @classmethod
    async def open(cls, dsn: str, settings: Settings) -> Database:
        """Opens the pool the settings describe (see `create_pool`)."""
        pool = await create_pool(dsn, settings)
        return cls(pool, settings.pool_mode, settings.limits.db_bulk_share(settings.pool_max_size))

    async def close(self) -> None:
        """Closes the pool once the connections lent out are back."""
        await self.pool.close()

    @contextlib.asynccontextmanager
    async def acquire(self, budget: Budget) -> AsyncIterator[PoolConnectionProxy]:
        """Borrows a connection, waiting at most the budget, first come first served.

        Whatever the driver raises inside (and while waiting) leaves as a
        domain error: Unavailable, DeadlineExceeded (`storage.errors`).

        With a connection idle and nobody queued it is taken at once, with no
        timeout task, and it goes back in a task of its own after the caller
        is done: asyncpg's per-borrow machinery (a `wait_for` task, a shielded
        release) would otherwise sit on every RPC's path.
        """
        conn: PoolConnectionProxy | None = None
        bulk = budget.lane is Lane.BULK
        try:
            if bulk:
                await self._enter_bulk(budget)
            try:
                entered = self._gate.try_enter()
                if entered and self.pool.get_idle_size() > 0:
                    try:
                        conn = await self.pool.acquire()
                    except BaseException:
                        self._gate.exit()
                        raise
                else:
                    conn = await self._acquire_waiting(entered, budget.seconds())
            except BaseException:
                if bulk:
                    self._bulk.exit()
                raise
            yield conn
        except (GuestFeedError, asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            error = translate(exc, budget)
            if error is None:
                raise
            raise error from exc
        finally:
            if conn is not None:
                self._release_soon(conn, bulk)

    async def _enter_bulk(self, budget: Budget) -> None:
        if self._bulk.try_enter():
            return
        self.waiting += 1
        try:
            async with asyncio.timeout(budget.queue_seconds()):
                await self._bulk.enter()
        finally:
            self.waiting -= 1

    async def _acquire_waiting(self, entered: bool, timeout: float) -> PoolConnectionProxy:
        self.waiting += 1
        try:
            async with asyncio.timeout(timeout):
                if not entered:
                    await self._gate.enter()
                    entered = True
                return await self.pool.acquire()
        except BaseException:
            if entered:
                self._gate.exit()
            raise
        finally:
            self.waiting -= 1

    def _release_soon(self, conn: PoolConnectionProxy, bulk: bool) -> None:
        # The pool rolls back an open transaction and waits out a cancelled
        # query before the connection is lent again; the task is kept so it
        # is not collected midway, and `Pool.close` waits for it. Untraced:
        # it outlives the RPC whose span it would otherwise join.
        task = asyncio.get_running_loop().create_task(
            self.pool.release(conn), context=self._untraced.copy()
        )
        self._releasing.add(task)
        task.add_done_callback(self._released_bulk if bulk else self._released)

    def _released_bulk(self, task: asyncio.Task[None]) -> None:
        self._released(task)
        self._bulk.exit()

    def _released(self, task: asyncio.Task[None]) -> None:
        self._releasing.discard(task)
        # The next borrower is let in once the connection is back in the pool.
        self._gate.exit()
        if not task.cancelled() and task.exception() is not None:
            # asyncpg has already terminated the connection; the pool opens
            # a new one when needed.
            log.warning("releasing a connection failed: %r", task.exception())

    async def ping(self, budget: Budget) -> None:
        """One trivial query (health's liveness probe of the database)."""
        async with self.acquire(budget) as conn:
            await conn.fetchval("SELECT 1", timeout=budget.seconds())

    def in_use(self) -> int:
        """Connections lent out right now."""
        return self.pool.get_size() - self.pool.get_idle_size()

    def idle(self) -> int:
        """Open connections waiting in the pool."""
        return self.pool.get_idle_size()
