"""`guestfeed migrate`: bring the database to what this release needs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from ..settings import ConfigError, PoolMode, Settings
from ..storage.connect import connect
from ..storage.embedded import start_embedded
from ..storage.migrate import APPLICATION_NAME as MIGRATE_APPLICATION_NAME
from ..storage.migrate import migrate


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `migrate`."""
    mig = sub.add_parser("migrate", help="create or update what the service needs in the database")
    mig.set_defaults(func=run)


def run(settings: Settings, ns: argparse.Namespace) -> int:
    """Applies what is missing and prints it."""
    if settings.pool_mode is PoolMode.TRANSACTION and not settings.direct_database_url:
        raise ConfigError(
            "migrate needs a real session (an advisory lock, CREATE INDEX CONCURRENTLY), which "
            "a transaction pooler does not give: set GUESTFEED_DIRECT_DATABASE_URL to the "
            "database's direct or session-pooler URL"
        )
    with contextlib.ExitStack() as stack:
        dsn = settings.direct_database_url or settings.database_url
        if dsn is None:
            embedded = start_embedded(settings.data_dir)
            stack.callback(embedded.stop)
            dsn = embedded.dsn
        applied = asyncio.run(_migrate(dsn, settings))
    print("applied: " + (", ".join(applied) if applied else "nothing (already up to date)"))
    return 0


async def _migrate(dsn: str, settings: Settings) -> list[str]:
    conn = await connect(
        dsn,
        settings.session_url_variable,
        timeout=settings.connect_timeout_s,
        application_name=MIGRATE_APPLICATION_NAME,
    )
    try:
        return await migrate(conn)
    finally:
        await conn.close()
