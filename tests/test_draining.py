"""SIGTERM drains: health NOT_SERVING first while calls are still served for
GUESTFEED_SHUTDOWN_DRAIN_S, then in-flight unary calls finish within the grace period and
open streams end UNAVAILABLE with a last response whose token resumes on another server.
All against real `guestfeed serve` processes."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from guestfeed.v1 import feed_pb2, feed_pb2_grpc
from guestfeed_server.rollout import store as rollout_store
from guestfeed_server.settings import ConfigError, Settings
from guestfeed_server.storage.migrate import migrate
from guestfeed_server.testing.procs import ServerProcess, spawn_server

from .conftest import SECRET, Client, scratch_database, start_client
from .factory import World

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FEED = "guestfeed.v1.GuestFeedService"
ROLLOUT = "guestfeed.v1.RolloutService"


class TestDrainSetting:
    def test_default_is_no_drain(self) -> None:
        """Unset or empty: 0, the shutdown as before (Kubernetes deployments set it)."""
        assert Settings.from_env({}).shutdown_drain_s == 0.0
        assert Settings.from_env({"GUESTFEED_SHUTDOWN_DRAIN_S": ""}).shutdown_drain_s == 0.0

    @pytest.mark.parametrize(("raw", "want"), [("0", 0.0), ("2.5", 2.5), ("15", 15.0)])
    def test_seconds_are_read(self, raw: str, want: float) -> None:
        """0 and positive seconds are accepted."""
        assert Settings.from_env({"GUESTFEED_SHUTDOWN_DRAIN_S": raw}).shutdown_drain_s == want

    @pytest.mark.parametrize("raw", ["-1", "-0.5", "nan", "inf", "soon"])
    def test_bad_values_name_the_variable(self, raw: str) -> None:
        """Negative, NaN, infinite or non-numeric: ConfigError naming the variable and
        what to put there."""
        with pytest.raises(ConfigError) as exc:
            Settings.from_env({"GUESTFEED_SHUTDOWN_DRAIN_S": raw})
        assert "GUESTFEED_SHUTDOWN_DRAIN_S" in str(exc.value)
        assert ">= 0" in str(exc.value)


@dataclass
class Feed:
    dsn: str
    event: uuid.UUID
    user: uuid.UUID
    # The guest's V1 feed, newest first.
    ids: list[str]


@pytest.fixture
async def feed(server_dsn: str) -> AsyncIterator[Feed]:
    """A database of the test's own (its locks and SIGTERMs reach no other test) with a
    guest whose 12 announcements are 150 kB each: one stream response is bigger than a
    64 KiB HTTP/2 window, so a server cannot run ahead of a reader that stops reading."""
    async with scratch_database(server_dsn, "guestfeed_drain") as (_, dsn):
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
            # Service callers may then pin V2 (the in-flight call below reads V2).
            current = await rollout_store.load(conn)
            await rollout_store.update(
                conn,
                current.with_changes(v2_enabled=True),
                expected_revision=current.revision,
                actor="tests",
                reason="drain tests read V2 by name",
            )
        finally:
            await conn.close()
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        assert pool is not None
        try:
            world = World(pool)
            event = await world.event()
            user, guest = await world.member(event)
            ids = []
            for _ in range(12):
                mid = await world.message(event, "announcement", content="x" * 150_000)
                await world.deliver(mid, guest_id=guest, user_id=user)
                ids.append(str(mid))
        finally:
            await pool.close()
        yield Feed(dsn, event, user, ids[::-1])


async def serve(dsn: str, **env: str) -> ServerProcess:
    return await spawn_server(
        {
            "GUESTFEED_DATABASE_URL": dsn,
            "GUESTFEED_JWT_SECRET": SECRET,
            "GUESTFEED_LISTEN": "127.0.0.1:0",
            "GUESTFEED_LOG_FORMAT": "json",
            "GUESTFEED_PROMETHEUS_PORT": "",
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            "GUESTFEED_HEALTH_INTERVAL_S": "0.2",
            **env,
        }
    )


async def status(channel: grpc.aio.Channel, service: str) -> int:
    resp = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=2
    )
    return int(resp.status)


async def until_not_serving(channel: grpc.aio.Channel, within_s: float = 5) -> None:
    started = time.monotonic()
    while await status(channel, "") != NOT_SERVING:
        assert time.monotonic() - started < within_s, "health never said NOT_SERVING"
        await asyncio.sleep(0.02)


async def exits_within(proc: ServerProcess, seconds: float) -> int:
    code = await asyncio.wait_for(proc.proc.wait(), seconds)
    await proc.stop()  # reaps the log reader
    return code


def logged(proc: ServerProcess) -> str:
    return b"".join(proc.log).decode()


class TestDrain:
    async def test_sigterm_drains_then_finishes_calls_and_ends_streams_resumably(
        self, feed: Feed
    ) -> None:
        """drain=2 s, grace=3 s. After SIGTERM every health name says NOT_SERVING at once
        while ListMessages still succeeds for about 2 s; then new calls are refused, a
        unary call in flight since before SIGTERM still completes, the open stream ends
        UNAVAILABLE after the grace, and its last response's token resumes on a fresh
        server with no gap and no duplicate. The process exits 0."""
        proc = await serve(
            feed.dsn,
            GUESTFEED_SHUTDOWN_DRAIN_S="2",
            GUESTFEED_SHUTDOWN_GRACE_S="3",
            # The in-flight call waits on a lock for seconds: no query timeout cuts it.
            GUESTFEED_QUERY_TIMEOUT_S="30",
        )
        locker = await asyncpg.connect(feed.dsn)
        locked = False
        channel = grpc.aio.insecure_channel(proc.target)
        # No BDP probing: a fixed 64 KiB window, so the stream stalls while unread.
        slow = grpc.aio.insecure_channel(proc.target, options=[("grpc.http2.bdp_probe", 0)])
        try:
            stub = feed_pb2_grpc.GuestFeedServiceStub(channel)

            async def one_page() -> feed_pb2.ListMessagesResponse:
                return await stub.ListMessages(
                    feed_pb2.ListMessagesRequest(event_id=str(feed.event), page_size=1),
                    metadata=Client.auth(feed.user),
                    timeout=2,
                )

            assert len((await one_page()).messages) == 1
            stream = feed_pb2_grpc.GuestFeedServiceStub(slow).StreamMessages(
                feed_pb2.StreamMessagesRequest(event_id=str(feed.event), page_size=1),
                metadata=Client.auth(feed.user),
            )
            received: list[feed_pb2.StreamMessagesResponse] = []
            for _ in range(2):
                resp = await stream.read()
                assert isinstance(resp, feed_pb2.StreamMessagesResponse)
                received.append(resp)
            # V2 reads scheduled_messages, V1 does not: this lock holds a V2 call in
            # flight while V1 calls keep being served.
            await locker.execute("BEGIN")
            await locker.execute("LOCK TABLE public.scheduled_messages IN ACCESS EXCLUSIVE MODE")
            locked = True
            in_flight = asyncio.ensure_future(
                stub.ListMessages(
                    feed_pb2.ListMessagesRequest(
                        event_id=str(feed.event),
                        page_size=3,
                        read_model=feed_pb2.READ_MODEL_V2,
                    ),
                    metadata=Client.pinning(feed.user),
                    timeout=30,
                )
            )
            await asyncio.sleep(0.5)
            assert not in_flight.done()

            proc.proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            await until_not_serving(channel)
            names = ("", FEED, ROLLOUT, "guestfeed.live", "guestfeed.ready")
            assert [await status(channel, n) for n in names] == [NOT_SERVING] * len(names)

            served_after_not_serving = 0
            refused: grpc.aio.AioRpcError | None = None
            while refused is None:
                assert time.monotonic() - sent < 10, "calls were never refused"
                try:
                    await one_page()
                    served_after_not_serving += 1
                except grpc.aio.AioRpcError as err:
                    refused = err
                await asyncio.sleep(0.1)
            refused_after = time.monotonic() - sent
            assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused
            assert served_after_not_serving >= 5, served_after_not_serving
            assert refused_after >= 1.8, f"calls refused {refused_after:.2f} s after SIGTERM"
            assert not in_flight.done()

            await locker.execute("ROLLBACK")
            locked = False
            finished = await asyncio.wait_for(in_flight, 5)
            assert [m.message_id for m in finished.messages] == feed.ids[:3]
            assert finished.read_model == feed_pb2.READ_MODEL_V2

            # The stream's reader has stalled since before SIGTERM: the server waits the
            # grace out for it, cancels it and exits.
            assert await exits_within(proc, 10) == 0
            assert time.monotonic() - sent >= 2 + 3 - 0.5
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                while True:
                    resp = await asyncio.wait_for(stream.read(), 10)
                    assert resp is not grpc.aio.EOF, "the stream ended OK, not UNAVAILABLE"
                    assert isinstance(resp, feed_pb2.StreamMessagesResponse)
                    received.append(resp)
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            if locked:
                await locker.execute("ROLLBACK")
            await locker.close()
            await channel.close(None)
            await slow.close(None)
            await proc.stop()

        token = received[-1].next_page_token
        assert token, "the last response before UNAVAILABLE carries a token to resume from"
        fresh = await start_client(feed.dsn)
        try:
            rest = [
                m.message_id
                async for resp in fresh.feed.StreamMessages(
                    feed_pb2.StreamMessagesRequest(
                        event_id=str(feed.event), page_size=5, page_token=token
                    ),
                    metadata=Client.auth(feed.user),
                )
                for m in resp.messages
            ]
        finally:
            await fresh.stop()
        before = [m.message_id for r in received for m in r.messages]
        assert before + rest == feed.ids
        text = logged(proc)
        assert "draining: health NOT_SERVING, still serving for 2 s" in text

    @pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
    async def test_a_second_signal_during_the_drain_exits_at_once(
        self, feed: Feed, second: signal.Signals
    ) -> None:
        """drain=60 s: a second SIGTERM or SIGINT does not wait for it; the process is
        killed by it at once, with no traceback."""
        proc = await serve(feed.dsn, GUESTFEED_SHUTDOWN_DRAIN_S="60")
        try:
            async with grpc.aio.insecure_channel(proc.target) as channel:
                # Answered: `serve` has installed its signal handlers (it logs that it
                # serves just before, and a SIGTERM in between would simply kill it).
                assert await status(channel, "guestfeed.live") == SERVING
                proc.proc.send_signal(signal.SIGTERM)
                await until_not_serving(channel)
                started = time.monotonic()
                proc.proc.send_signal(second)
                code = await exits_within(proc, 5)
                assert time.monotonic() - started < 3
        finally:
            await proc.stop()
        assert code == -second, code
        assert "Traceback" not in logged(proc)

    async def test_without_a_drain_sigterm_stops_as_before(self, feed: Feed) -> None:
        """Unset drain: no drain step, the idle server exits 0 within a second or two."""
        proc = await serve(feed.dsn)
        try:
            async with grpc.aio.insecure_channel(proc.target) as channel:
                assert await status(channel, "guestfeed.ready") == SERVING
                started = time.monotonic()
                proc.proc.send_signal(signal.SIGTERM)
                code = await exits_within(proc, 10)
                assert time.monotonic() - started < 3
        finally:
            await proc.stop()
        assert code == 0
        assert "draining" not in logged(proc)
