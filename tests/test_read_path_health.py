"""Health that tells the truth: a locked `messages` table takes guestfeed.read_path and
guestfeed.ready out while `SELECT 1` (and guestfeed.live) still answer, and a probe of
the feed tables brings them back once the lock is gone, with no feed traffic needed."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from guestfeed.v1 import feed_pb2, feed_pb2_grpc
from guestfeed_server.domain.model import ReadModel
from guestfeed_server.domain.signals import PageOutcome
from guestfeed_server.feed.readiness import ReadPathHealth
from guestfeed_server.settings import ConfigError, ReadPathSettings, Settings
from guestfeed_server.storage.migrate import migrate
from guestfeed_server.testing.procs import ServerProcess, spawn_server

from .conftest import SECRET, Client, scratch_database
from .factory import World

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LIVE, READ_PATH, READY = "guestfeed.live", "guestfeed.read_path", "guestfeed.ready"
FEED = "guestfeed.v1.GuestFeedService"


# --- the rule, with a hand-driven clock --------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Probe:
    """A probe that fails until told to answer, counting its calls."""

    def __init__(self) -> None:
        self.answers = False
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if not self.answers:
            raise TimeoutError


def tracker(clock: FakeClock, probe: Probe, *, min_failures: int = 3) -> ReadPathHealth:
    return ReadPathHealth(
        probe, window_s=10.0, min_failures=min_failures, probe_timeout_s=1.0, clock=clock
    )


def outcome(*, failed: bool) -> PageOutcome:
    return PageOutcome(uuid.uuid4(), ReadModel.V1, 5.0, failed)


class TestTheRule:
    async def test_a_few_failures_are_not_enough(self) -> None:
        """Fewer failures than the minimum leave it healthy, however few the reads."""
        health = tracker(FakeClock(), Probe())
        for _ in range(2):
            health.observe(outcome(failed=True))
        assert health.healthy and not health.changed.is_set()

    async def test_mostly_failing_reads_trip_it_at_once(self) -> None:
        """The minimum of failures, at least half the window's reads: unhealthy, and the
        health loop is woken to publish it now."""
        health = tracker(FakeClock(), Probe())
        health.observe(outcome(failed=False))
        for _ in range(3):
            health.observe(outcome(failed=True))
        assert not health.healthy and health.changed.is_set()
        assert "3 of 4 page reads in the last 10 s failed" in health.reason

    async def test_failures_among_many_good_reads_are_not_failing(self) -> None:
        """Five failures among twenty good reads are a bad moment, not a stuck database."""
        health = tracker(FakeClock(), Probe())
        for i in range(25):
            health.observe(outcome(failed=i % 5 == 0))
        assert health.healthy

    async def test_failures_older_than_the_window_do_not_count(self) -> None:
        """Two failures, eleven seconds, one failure: never three within ten seconds."""
        clock = FakeClock()
        health = tracker(clock, Probe())
        health.observe(outcome(failed=True))
        health.observe(outcome(failed=True))
        clock.now += 11
        health.observe(outcome(failed=True))
        assert health.healthy
        assert health.window() == (0, 1)

    async def test_the_window_keeps_constant_memory(self) -> None:
        """A busy replica's outcomes are counted in slices, not kept one by one."""
        clock = FakeClock()
        health = tracker(clock, Probe())
        for _ in range(100_000):
            clock.now += 0.001
            health.observe(outcome(failed=False))
        assert len(health._slices) <= 11
        assert sum(health.window()) <= 10_000 + 1000

    async def test_recovers_only_once_the_probe_answers(self) -> None:
        """While unhealthy each refresh probes; a failing probe keeps it out, an answering
        one brings it back (no traffic needed) and forgets the old failures."""
        clock, probe = FakeClock(), Probe()
        health = tracker(clock, probe)
        assert await health.refresh() is True
        assert probe.calls == 0, "a healthy read path is never probed: liveness stays cheap"
        for _ in range(3):
            health.observe(outcome(failed=True))
        assert await health.refresh() is False
        assert await health.refresh() is False
        assert probe.calls == 2
        probe.answers = True
        clock.now += 3
        assert await health.refresh() is True
        assert health.healthy and "answered a probe after 3.0 s" in health.reason
        assert health.window() == (0, 0)
        health.observe(outcome(failed=True))
        assert health.healthy

    async def test_pages_still_failing_outweigh_an_answering_probe(self) -> None:
        """The tables answer but pages kept failing since the last tick: still unhealthy;
        once the failures stop, the next answering probe recovers it."""
        probe = Probe()
        health = tracker(FakeClock(), probe)
        for _ in range(3):
            health.observe(outcome(failed=True))
        # The trip's own failures are the reads since the last tick.
        assert await health.refresh() is False
        probe.answers = True
        for _ in range(3):
            health.observe(outcome(failed=True))
        assert await health.refresh() is False
        health.observe(outcome(failed=False))
        assert await health.refresh() is True

    async def test_a_probe_that_hangs_is_cut_off(self) -> None:
        """A probe stuck behind a lock ends at the probe timeout as a failed probe."""

        async def hang() -> None:
            await asyncio.sleep(60)

        health = ReadPathHealth(hang, window_s=10.0, min_failures=1, probe_timeout_s=0.05)
        health.observe(outcome(failed=True))
        started = time.monotonic()
        assert await health.refresh() is False
        assert time.monotonic() - started < 2


class TestSettings:
    def test_defaults(self) -> None:
        """Unset: a 10 s window and at least 3 failures."""
        assert Settings.from_env({}).read_path == ReadPathSettings(10.0, 3)

    def test_values_are_read(self) -> None:
        """Both variables end up in the settings."""
        s = Settings.from_env(
            {"GUESTFEED_READ_PATH_WINDOW_S": "4.5", "GUESTFEED_READ_PATH_MIN_FAILURES": "7"}
        )
        assert s.read_path == ReadPathSettings(4.5, 7)

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("GUESTFEED_READ_PATH_WINDOW_S", "0"),
            ("GUESTFEED_READ_PATH_WINDOW_S", "-3"),
            ("GUESTFEED_READ_PATH_WINDOW_S", "nan"),
            ("GUESTFEED_READ_PATH_WINDOW_S", "inf"),
            ("GUESTFEED_READ_PATH_WINDOW_S", "soon"),
            ("GUESTFEED_READ_PATH_MIN_FAILURES", "0"),
            ("GUESTFEED_READ_PATH_MIN_FAILURES", "2.5"),
        ],
    )
    def test_bad_values_name_the_variable(self, name: str, value: str) -> None:
        """A bad window or minimum stops start-up with a message naming the variable."""
        with pytest.raises(ConfigError) as exc:
            Settings.from_env({name: value})
        assert name in str(exc.value)


# --- a real server, a real lock ----------------------------------------------------------


@pytest.fixture
async def own_db(server_dsn: str) -> AsyncIterator[str]:
    """A migrated database of the test's own: its lock cannot reach other tests."""
    async with scratch_database(server_dsn, "guestfeed_readpath") as (_, dsn):
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield dsn


async def status(channel: grpc.aio.Channel, service: str) -> int:
    resp = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return int(resp.status)


async def until(channel: grpc.aio.Channel, service: str, want: int, within_s: float) -> float:
    """Polls Check(service) until it reports `want`; returns the seconds it took."""
    started = time.monotonic()
    while (got := await status(channel, service)) != want:
        if time.monotonic() - started > within_s:
            raise AssertionError(f"{service!r} not {want} within {within_s} s (last: {got})")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def records(proc: ServerProcess) -> list[dict[str, Any]]:
    text = b"".join(proc.log).decode()
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


class TestLockedMessages:
    async def test_a_locked_table_takes_the_read_path_out_and_its_release_brings_it_back(
        self, own_db: str
    ) -> None:
        """ACCESS EXCLUSIVE on messages: feed calls time out, guestfeed.read_path and
        guestfeed.ready turn NOT_SERVING within the window while "" and guestfeed.live stay
        SERVING; after the rollback both return to SERVING with no feed call in between.
        Caller mistakes before that never count. One WARNING when it flips, one INFO back."""
        pool = await asyncpg.create_pool(own_db, min_size=1, max_size=2)
        assert pool is not None
        world = World(pool)
        event = await world.event()
        user, guest = await world.member(event)
        outsider = await world.user()
        for _ in range(3):
            mid = await world.message(event, "announcement")
            await world.deliver(mid, guest_id=guest, user_id=user)
        proc = await spawn_server(
            {
                "GUESTFEED_DATABASE_URL": own_db,
                "GUESTFEED_JWT_SECRET": SECRET,
                "GUESTFEED_LISTEN": "127.0.0.1:0",
                "GUESTFEED_LOG_FORMAT": "json",
                "GUESTFEED_PROMETHEUS_PORT": "",
                "OTEL_TRACES_EXPORTER": "none",
                "OTEL_METRICS_EXPORTER": "none",
                "GUESTFEED_QUERY_TIMEOUT_S": "0.5",
                "GUESTFEED_HEALTH_INTERVAL_S": "0.2",
            }
        )
        locker = await asyncpg.connect(own_db)
        locked = False
        try:
            async with grpc.aio.insecure_channel(proc.target) as channel:
                feed = feed_pb2_grpc.GuestFeedServiceStub(channel)

                async def page(who: uuid.UUID, **kw: Any) -> feed_pb2.ListMessagesResponse:
                    return await feed.ListMessages(
                        feed_pb2.ListMessagesRequest(event_id=str(event), **kw),
                        metadata=Client.auth(who),
                        timeout=5,
                    )

                for service in ("", FEED, LIVE, READ_PATH, READY):
                    assert await status(channel, service) == SERVING, service
                # Caller mistakes, many of them: not the read path's fault.
                for _ in range(10):
                    with pytest.raises(grpc.aio.AioRpcError) as denied:
                        await page(outsider)
                    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
                    with pytest.raises(grpc.aio.AioRpcError) as invalid:
                        await page(user, page_token="not-a-token")
                    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                await asyncio.sleep(0.5)
                assert await status(channel, READ_PATH) == SERVING

                await locker.execute("BEGIN")
                await locker.execute("LOCK TABLE public.messages IN ACCESS EXCLUSIVE MODE")
                locked = True
                started = time.monotonic()
                # Rounds of calls until it flips: the ten good (if denied) reads above
                # are in the window too, and failures must be at least half of it.
                while await status(channel, READ_PATH) == SERVING:
                    assert time.monotonic() - started < 10, "not NOT_SERVING within the window"
                    failures = await asyncio.gather(
                        *(page(user) for _ in range(4)), return_exceptions=True
                    )
                    assert all(
                        isinstance(e, grpc.aio.AioRpcError)
                        and e.code()
                        in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                        for e in failures
                    ), failures
                    await asyncio.sleep(0.1)
                assert await status(channel, READY) == NOT_SERVING
                assert await status(channel, LIVE) == SERVING
                assert await status(channel, "") == SERVING, "SELECT 1 still answers"
                assert await status(channel, FEED) == SERVING, "existing names keep their meaning"
                # Several health ticks, no traffic: the probe waits on the lock and fails.
                await asyncio.sleep(1.5)
                assert await status(channel, READ_PATH) == NOT_SERVING

                await locker.execute("ROLLBACK")
                locked = False
                await until(channel, READ_PATH, SERVING, within_s=5)
                assert await status(channel, READY) == SERVING
                assert len((await page(user)).messages) == 3
        finally:
            if locked:
                await locker.execute("ROLLBACK")
            await locker.close()
            code = await proc.stop()
            await pool.close()
        assert code == 0
        logged = records(proc)
        flips = [r for r in logged if r["msg"].startswith("read path failing")]
        backs = [r for r in logged if r["msg"].startswith("read path answering again")]
        assert [r["level"] for r in flips] == ["warning"], flips
        assert "failed on the server's side" in flips[0]["msg"], flips
        assert READ_PATH in flips[0]["msg"] and READY in flips[0]["msg"]
        assert [r["level"] for r in backs] == ["info"], backs
        assert "answered a probe" in backs[0]["msg"]
