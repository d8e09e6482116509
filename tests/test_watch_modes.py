"""Exact and safe mode: what the horizon can see decides how it is held, and health says which.

A role with pg_read_all_stats (or a superuser, as the shared test server)
sees every session's transaction start: the horizon is exact. A role
without it sees other roles' sessions with no details: the hub then holds
the horizon GUESTFEED_WATCH_SAFE_LAG_S behind now, logs why once, and health
`guestfeed.watch.exact` says NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from guestfeed.v1 import feed_pb2
from guestfeed_server.feed.watch_hub import FRESH_S
from guestfeed_server.settings import ConfigError, WatchSettings

from .conftest import Client, start_client
from .factory import World
from .helpers import MODELS
from .rollout_helpers import NOT_SERVING, SERVING, eventually, health
from .telemetry_helpers import server_spans, traced_server
from .test_readonly_role import ReadOnly, readonly_role  # noqa: F401 (a fixture)
from .tracing import Tracing
from .watch_helpers import Watch, announce, writer

EXACT = "guestfeed.watch.exact"


class TestExactMode:
    async def test_superuser_server_is_exact(self, client: Client) -> None:
        """The shared server (a superuser sees every session) reports exact mode."""
        hub = client.app.watch
        assert hub is not None
        await hub.probe()
        assert hub.exact and hub.horizon is not None and hub.horizon.hidden == 0
        assert await eventually(lambda: health(client, EXACT), SERVING) < 5

    async def test_horizon_is_held_by_an_open_transaction(
        self, client: Client, world: World
    ) -> None:
        """An idle-in-transaction session holds the horizon (and so updates) back to
        its start; the lag is reported, and the horizon moves on once it ends."""
        hub = client.app.watch
        assert hub is not None
        async with writer(world) as tx:
            started = await tx.conn.fetchval("SELECT now()")
            await asyncio.sleep(0.5)
            h = await hub.probe()
            assert h.at <= started and h.lag_s >= 0.5
            assert h.oldest_start == started and h.oldest_state == "idle in transaction"
        await asyncio.sleep(0.1)
        assert (await hub.probe()).at > started


class TestSafeMode:
    async def test_without_pg_read_all_stats(
        self,
        readonly_role: ReadOnly,  # noqa: F811 (the fixture imported above)
        admin_pool: asyncpg.Pool,
        world: World,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Served by a role without pg_read_all_stats while another role holds a
        session: one WARNING naming the grant, health NOT_SERVING for
        guestfeed.watch.exact, and updates still arrive, GUESTFEED_WATCH_SAFE_LAG_S
        (here 1 s) late. Granting pg_read_all_stats brings exact mode back."""
        caplog.set_level(logging.INFO, logger="guestfeed_server.feed.watch_hub")
        c = await start_client(readonly_role.dsn, GUESTFEED_WATCH_SAFE_LAG_S="1")
        try:
            async with admin_pool.acquire() as other:  # another role's session
                await other.execute("SELECT 1")
                hub = c.app.watch
                assert hub is not None
                await hub.probe()
                assert not hub.exact and hub.horizon is not None and hub.horizon.hidden >= 1
                assert await eventually(lambda: health(c, EXACT), NOT_SERVING) < 5
                warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
                assert sum("pg_read_all_stats" in m for m in warnings) == 1, warnings
                event = await world.event()
                user, _ = await world.member(event)
                w = await Watch.open(c.feed, event, c.pinning(user), model=MODELS["v2"])
                try:
                    started = time.monotonic()
                    mid = await announce(world, event)
                    await w.wait_ids([mid], timeout=5)
                    took = w.arrival[str(mid)] - started
                    assert 0.8 <= took < 3, took
                    assert w.responses[-1].read_model == feed_pb2.READ_MODEL_V2
                finally:
                    await w.close()
                await admin_pool.execute(f"GRANT pg_read_all_stats TO {readonly_role.name}")
                try:
                    await hub.probe()
                    assert hub.exact
                    assert await eventually(lambda: health(c, EXACT), SERVING) < 5
                    assert any("exact mode again" in r.getMessage() for r in caplog.records)
                finally:
                    await admin_pool.execute(f"REVOKE pg_read_all_stats FROM {readonly_role.name}")
        finally:
            await c.stop()


class TestFirstPagesStayOneStatement:
    async def test_a_first_page_reading_a_horizon_is_still_one_span(
        self,
        admin_dsn: str,
        tracing: Tracing,
        spans: InMemorySpanExporter,
        world: World,
    ) -> None:
        """With no recent horizon (nobody watching for over a second), a first page
        reads one on its own connection before its statement: its watch_token is
        newer than before, and the trace still shows one database statement."""
        event = await world.event()
        user, _ = await world.member(event)
        async with traced_server(admin_dsn, tracing) as t:
            hub = t.client.app.watch
            assert hub is not None
            before = hub.queries["horizon"]
            await asyncio.sleep(FRESH_S + 0.2)
            spans.clear()
            page = await t.client.feed.ListMessages(
                feed_pb2.ListMessagesRequest(event_id=str(event)),
                metadata=Client.auth(user),
            )
            assert page.watch_token
            assert hub.queries["horizon"] == before  # read with the page, not by the hub
            assert hub.fresh() is not None
            (server,) = server_spans(spans)
            db = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
            assert len(db) == 1 and db[0].context.trace_id == server.context.trace_id


class TestSettings:
    def test_defaults_and_overrides(self) -> None:
        """The documented defaults, and every variable read."""
        assert WatchSettings.from_env({}) == WatchSettings(
            tick_s=0.1, heartbeat_s=15.0, buffer=1000, max_catchup=1000, safe_lag_s=30.0
        )
        s = WatchSettings.from_env(
            {
                "GUESTFEED_WATCH_TICK_MS": "250",
                "GUESTFEED_WATCH_HEARTBEAT_S": "5",
                "GUESTFEED_WATCH_BUFFER": "10",
                "GUESTFEED_WATCH_MAX_CATCHUP": "20",
                "GUESTFEED_WATCH_SAFE_LAG_S": "60",
                "GUESTFEED_WATCH_MARGIN_MS": "0",
            }
        )
        assert (s.tick_s, s.heartbeat_s, s.buffer, s.max_catchup) == (0.25, 5.0, 10, 20)
        assert (s.safe_lag_s, s.margin_s) == (60.0, 0.0)

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("GUESTFEED_WATCH_TICK_MS", "5"),
            ("GUESTFEED_WATCH_TICK_MS", "fast"),
            ("GUESTFEED_WATCH_HEARTBEAT_S", "0.05"),
            ("GUESTFEED_WATCH_HEARTBEAT_S", "nan"),
            ("GUESTFEED_WATCH_BUFFER", "0"),
            ("GUESTFEED_WATCH_MAX_CATCHUP", "-1"),
            ("GUESTFEED_WATCH_SAFE_LAG_S", "inf"),
            ("GUESTFEED_WATCH_MARGIN_MS", "-1"),
        ],
    )
    def test_bad_values_name_the_variable(self, name: str, value: str) -> None:
        """A malformed value stops start-up with a message naming its variable."""
        with pytest.raises(ConfigError) as caught:
            WatchSettings.from_env({name: value})
        assert name.removesuffix("_S").removesuffix("_MS") in str(caught.value)
