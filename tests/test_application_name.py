"""Every connection the service opens names itself in pg_stat_activity.

An operator looking at pg_stat_activity (or a pooler's stats) must be able to
tell the service's sessions apart from everyone else's, and one kind of
session from another: the pool's, the rollout listener's, the start-up check
of the direct URL, and migrate's. The test samples pg_stat_activity for its
own database while `guestfeed migrate` and a replica do their work.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from guestfeed.v1 import feed_pb2
from guestfeed_server.auth import Role
from guestfeed_server.storage import migrate as migrate_module

from .cli_helpers import clean_env, run_cli
from .conftest import SECRET, Client, scratch_database, start_client
from .factory import World
from .rollout_helpers import LIVE, R, admin, eventually, pb_config, update

POOL = "guestfeed"
LISTENER = "guestfeed-rollout-listener"
STARTUP = "guestfeed-startup"
MIGRATE = migrate_module.APPLICATION_NAME
# This test's own sessions (arranging rows, holding the lock, sampling).
TEST = "test-admin"
KNOWN = {POOL, LISTENER, STARTUP, MIGRATE, TEST}

SESSIONS_SQL = (
    "SELECT pid, application_name, left(query, 80) AS query, state FROM pg_stat_activity "
    "WHERE datname = current_database() AND backend_type = 'client backend' "
    "AND pid <> pg_backend_pid()"
)


class Sampler:
    """Reads the database's client sessions every 10 ms, keeping every name seen."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.names: dict[str, set[int]] = {}
        self.rows: list[asyncpg.Record] = []
        self._task: asyncio.Task[None] | None = None
        # The loop and the test both sample, on one connection.
        self._lock = asyncio.Lock()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def sample(self) -> list[asyncpg.Record]:
        async with self._lock:
            rows = await self._conn.fetch(SESSIONS_SQL)
        for r in rows:
            self.names.setdefault(r["application_name"], set()).add(r["pid"])
        self.rows = rows
        return rows

    async def _run(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def sampling(dsn: str) -> AsyncIterator[Sampler]:
    conn = await asyncpg.connect(dsn, server_settings={"application_name": TEST})
    sampler = Sampler(conn)
    sampler.start()
    try:
        yield sampler
    finally:
        await sampler.stop()
        await conn.close()


async def until_session(sampler: Sampler, text: str, within_s: float) -> asyncpg.Record:
    """The first session whose current query contains `text`."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        for r in await sampler.sample():
            if text in (r["query"] or ""):
                return r
        await asyncio.sleep(0.02)
    raise AssertionError(f"no session ran {text!r}; saw {sampler.rows}")


class TestApplicationNames:
    async def test_every_session_of_migrate_and_a_replica_is_named(
        self, server_dsn: str, tmp_path: Path
    ) -> None:
        """migrate (seen while it waits for its lock) is guestfeed-migrate; a replica
        that serves pages, a stream, a rollout update and a comparison opens only
        guestfeed (pool), guestfeed-rollout-listener and guestfeed-startup sessions;
        nothing in the database is unnamed or unknown."""
        async with (
            scratch_database(server_dsn, "guestfeed_appname") as (_, dsn),
            sampling(dsn) as sampler,
        ):
            holder = await asyncpg.connect(dsn, server_settings={"application_name": TEST})
            try:
                # Held here, migrate's session waits in plain sight until released.
                await holder.execute("SELECT pg_advisory_lock($1)", migrate_module._LOCK_KEY)
                env = clean_env(tmp_path, GUESTFEED_DATABASE_URL=dsn, GUESTFEED_JWT_SECRET=SECRET)
                cli = asyncio.ensure_future(run_cli(env, "migrate"))
                waiting = await until_session(sampler, "pg_try_advisory_lock", 30.0)
                assert waiting["application_name"] == MIGRATE, waiting
                await holder.execute("SELECT pg_advisory_unlock($1)", migrate_module._LOCK_KEY)
                code, out, err = await cli
                assert code == 0, (out, err)
            finally:
                await holder.close()

            await self._exercise_a_replica(dsn, sampler)

        names = set(sampler.names)
        assert "" not in names, sampler.names
        assert names <= KNOWN, f"unknown application_name: {names - KNOWN}"
        assert {POOL, LISTENER, MIGRATE} <= names, names

    async def _exercise_a_replica(self, dsn: str, sampler: Sampler) -> None:
        pool = await asyncpg.create_pool(
            dsn, min_size=1, max_size=2, server_settings={"application_name": TEST}
        )
        assert pool is not None
        try:
            world = World(pool)
            event = await world.event()
            user, guest = await world.member(event)
            for _ in range(3):
                mid = await world.message(event, "announcement")
                await world.deliver(mid, guest_id=guest, user_id=user)
        finally:
            await pool.close()
        c = await start_client(dsn, GUESTFEED_DIRECT_DATABASE_URL=dsn, **LIVE)
        try:
            page = await c.feed.ListMessages(
                feed_pb2.ListMessagesRequest(event_id=str(event)), metadata=Client.auth(user)
            )
            assert len(page.messages) == 3
            streamed = [
                r
                async for r in c.feed.StreamMessages(
                    feed_pb2.StreamMessagesRequest(event_id=str(event), page_size=1),
                    metadata=Client.auth(user),
                )
            ]
            assert len(streamed) == 3
            await update(c, 1, pb_config(True, 50))
            compared = [
                r
                async for r in c.rollout.CompareReadModels(
                    R.CompareReadModelsRequest(event_id=str(event)),
                    metadata=Client.auth(uuid.uuid4(), Role.SERVICE_ROLE),
                )
            ]
            assert compared
            await c.rollout.GetRolloutConfig(R.GetRolloutConfigRequest(), metadata=admin())

            async def listening() -> bool:
                return any(r["application_name"] == LISTENER for r in await sampler.sample())

            await eventually(listening, True, 5.0)
        finally:
            await c.stop()
