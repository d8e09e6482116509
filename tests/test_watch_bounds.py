"""WatchMessages' bounds: slow consumers, cancellations, queries per tick, kill switches."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid

import asyncpg
import grpc
import pytest

from guestfeed.v1 import feed_pb2, feed_pb2_grpc

from .conftest import start_client
from .factory import World
from .helpers import MODELS, error_info
from .rollout_helpers import Own, pb_config, update
from .watch_helpers import Watch, settle, writer

# A client that reads nothing lets the server write only this much before gRPC's
# flow control stops it (no window growth from BDP probes).
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
BIG = "x" * 8000


class TestSlowConsumer:
    async def test_buffer_stays_bounded_and_resuming_loses_nothing(
        self, admin_dsn: str, world: World
    ) -> None:
        """A watcher that stops reading while 60 large messages arrive: the server
        never queues more than GUESTFEED_WATCH_BUFFER (20) for it, the stream ends
        with UNAVAILABLE (WATCH_BUFFER_FULL) once the client reads again, and a watch
        from the last token received gets every other message, none twice."""
        c = await start_client(admin_dsn, GUESTFEED_WATCH_BUFFER="20")
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{c.app.port}", options=SMALL_WINDOW)
        hub = c.app.watch
        assert hub is not None
        try:
            event = await world.event()
            user, _ = await world.member(event)
            call = feed_pb2_grpc.GuestFeedServiceStub(channel).WatchMessages(
                feed_pb2.WatchMessagesRequest(event_id=str(event), read_model=MODELS["v2"]),
                metadata=c.pinning(user),
            )
            first = await call.read()
            assert isinstance(first, feed_pb2.WatchMessagesResponse)
            written: list[uuid.UUID] = []
            peak = 0
            for _ in range(60):
                async with writer(world) as tx:
                    mid = await tx.message(event, "announcement")
                    await tx.conn.execute(
                        "UPDATE public.messages SET content = $2 WHERE id = $1", mid, BIG
                    )
                written.append(mid)
                peak = max([peak, *hub.buffered()])
                await asyncio.sleep(0.02)
            await settle(c)
            peak = max([peak, *hub.buffered()])
            assert peak <= 20
            received: list[str] = []
            token = first.resume_token
            status = None
            try:
                while (r := await call.read()) != grpc.aio.EOF:
                    assert isinstance(r, feed_pb2.WatchMessagesResponse)
                    received += [m.message_id for m in r.messages]
                    token = r.resume_token
            except grpc.aio.AioRpcError as e:
                status = e
            assert status is not None and status.code() == grpc.StatusCode.UNAVAILABLE
            info = error_info(status)
            assert info is not None and info.reason == "WATCH_BUFFER_FULL"
            assert len(received) < len(written)
            again = await Watch.open(
                c.feed, event, c.pinning(user), token=token, model=MODELS["v2"]
            )
            try:
                rest = [m for m in map(str, written) if m not in received]
                await again.wait_ids([uuid.UUID(m) for m in rest])
                await settle(c)
                assert sorted(received + again.ids) == sorted(map(str, written))
            finally:
                await again.close()
        finally:
            await channel.close()
            await c.stop()


class TestCancellations:
    async def test_a_thousand_cancellations_leave_nothing_behind(
        self,
        admin_dsn: str,
        world: World,
        admin_pool: asyncpg.Pool,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """1,000 watches cancelled at random points (before any response, after the
        first, after a message): nothing is logged at ERROR, and no watcher, queued
        message, stream slot or task is left, the pool is idle, and the database has
        no more of our sessions."""
        c = await start_client(
            admin_dsn,
            GUESTFEED_MAX_STREAMS_PER_CALLER="64",
            GUESTFEED_MAX_STREAMS_PER_CALLER_EVENT="64",
        )
        hub = c.app.watch
        assert hub is not None
        rng = random.Random(20261201)
        try:
            event = await world.event()
            user, guest = await world.member(event)
            warm = await Watch.open(c.feed, event, c.auth(user))
            await warm.close()
            await asyncio.sleep(0.3)
            tasks_before = len(asyncio.all_tasks())
            sessions_before = await _sessions(admin_pool)
            gate = asyncio.Semaphore(20)
            stop = asyncio.Event()

            async def keep_writing() -> None:
                while not stop.is_set():
                    async with writer(world) as tx:
                        mid = await tx.message(event, "announcement")
                        # A guest's token reads V1 here (0 %): delivered messages show.
                        await tx.deliver(mid, guest_id=guest, user_id=user)
                    await asyncio.sleep(0.05)

            async def one() -> None:
                async with gate:
                    call = c.feed.WatchMessages(
                        feed_pb2.WatchMessagesRequest(event_id=str(event)),
                        metadata=c.auth(user),
                    )
                    point = rng.randrange(-1, 3)
                    if point < 0:
                        await asyncio.sleep(rng.random() * 0.005)
                    for _ in range(point):
                        if await call.read() == grpc.aio.EOF:
                            break
                    call.cancel()

            writing = asyncio.create_task(keep_writing())
            await asyncio.gather(*(one() for _ in range(1000)))
            stop.set()
            await writing
            for _ in range(200):  # 10 s
                if not (hub.watchers or c.app.db.in_use()):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert errors == [], [r.getMessage() for r in errors[:3]]
            assert hub.watchers == 0 and hub.buffered() == []
            assert c.app.telemetry.sources.streams_active() == 0
            assert len(asyncio.all_tasks()) <= tasks_before + 2
            assert await _sessions(admin_pool) <= max(sessions_before, 10)
            # The replica still serves watches.
            w = await Watch.open(c.feed, event, c.auth(user))
            assert w.responses and w.error is None
            await w.close()
        finally:
            await c.stop()


async def _sessions(pool: asyncpg.Pool) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = 'guestfeed'"
        )
    )


class TestQueriesStayFlat:
    async def test_one_and_fifty_watchers_cost_the_same_queries_per_tick(
        self, admin_dsn: str, world: World
    ) -> None:
        """Over ~2 s with messages arriving, the hub runs one horizon query per tick
        and at most one changes query per tick, whether 1 or 50 guests watch; the
        only per-watcher query is each watch's start (catch_up)."""
        c = await start_client(admin_dsn)
        hub = c.app.watch
        assert hub is not None
        try:
            event = await world.event()
            users = [(await world.member(event))[0] for _ in range(50)]
            per_tick = []
            for n in (1, 50):
                watches = [
                    await Watch.open(c.feed, event, c.pinning(u), model=MODELS["v2"])
                    for u in users[:n]
                ]
                await settle(c)
                q0, t0 = dict(hub.queries), hub.ticks
                sent = []
                for _ in range(10):
                    async with writer(world) as tx:
                        sent.append(await tx.message(event, "announcement"))
                    await asyncio.sleep(0.2)
                await settle(c)
                ticks = hub.ticks - t0
                q = {k: hub.queries[k] - q0.get(k, 0) for k in hub.queries}
                for w in watches:
                    await w.wait_ids(sent)
                    await w.close()
                assert q.get("catch_up", 0) == 0, q
                assert q["horizon"] >= ticks and q["changes"] <= ticks, (q, ticks)
                assert q.get("access", 0) <= ticks // 5 + 1, (q, ticks)
                per_tick.append((q["horizon"] + q["changes"]) / ticks)
            assert abs(per_tick[0] - per_tick[1]) < 0.25, per_tick
        finally:
            await c.stop()


class TestKillSwitch:
    async def test_a_v2_watch_continues_in_v1_after_a_kill(self, own: Own) -> None:
        """A service caller's V2 watch: after the stored kill switch, new messages come
        as V1 sees them (an undelivered announcement no longer arrives, a delivered
        one does) and the tokens say V1; a V2 token resumes in V1."""
        world = own.world()
        c = own.client
        await update(c, 1, pb_config(True, 0))
        event = await world.event()
        user, guest = await world.member(event)
        w = await Watch.open(c.feed, event, c.pinning(user), model=MODELS["v2"])
        try:
            async with writer(world) as tx:
                v2_only = await tx.message(event, "announcement")
            await w.wait_ids([v2_only])
            v2_token = w.token
            assert w.responses[-1].read_model == feed_pb2.READ_MODEL_V2
            await update(c, 2, pb_config(False, 0))
            await asyncio.sleep(2)  # the re-read (0.3 s) and the access refresh (1 s)
            async with writer(world) as tx:
                hidden = await tx.message(event, "announcement")
                shown = await tx.message(event, "announcement")
                await tx.deliver(shown, guest_id=guest, user_id=user)
            await w.wait_ids([shown])
            await settle(c)
            assert str(hidden) not in w.ids
            assert w.responses[-1].read_model == feed_pb2.READ_MODEL_V1
        finally:
            await w.close()
        again = await Watch.open(c.feed, event, c.pinning(user), token=v2_token, model=MODELS["v2"])
        try:
            await again.wait_ids([shown])
            assert again.responses[0].read_model == feed_pb2.READ_MODEL_V1
            assert str(hidden) not in again.ids
        finally:
            await again.close()


class TestHeartbeatsAndShutdown:
    async def test_idle_watch_gets_heartbeats_it_can_resume_from(
        self, admin_dsn: str, world: World
    ) -> None:
        """With nothing to send, a watch still gets an empty response at least every
        GUESTFEED_WATCH_HEARTBEAT_S (0.5 s here), each with a newer token; a watch
        resumed from a heartbeat's token gets what came after it."""
        c = await start_client(admin_dsn, GUESTFEED_WATCH_HEARTBEAT_S="0.5")
        try:
            event = await world.event()
            user, _ = await world.member(event)
            w = await Watch.open(c.feed, event, c.pinning(user), model=MODELS["v2"])
            await asyncio.sleep(2.2)
            await w.close()
            beats = w.responses[1:]
            assert len(beats) >= 3 and not any(r.messages for r in beats)
            assert len({r.resume_token for r in w.responses}) == len(w.responses)
            async with writer(world) as tx:
                mid = await tx.message(event, "announcement")
            again = await Watch.open(
                c.feed, event, c.pinning(user), token=w.token, model=MODELS["v2"]
            )
            try:
                await again.wait_ids([mid])
                assert again.ids == [str(mid)]
            finally:
                await again.close()
        finally:
            await c.stop()

    async def test_shutdown_ends_watches_resumably_and_quickly(
        self, admin_dsn: str, world: World
    ) -> None:
        """A replica stopping ends its watches with UNAVAILABLE (SERVER_SHUTTING_DOWN)
        before its grace period, so they resume elsewhere and the stop is not held up."""
        c = await start_client(admin_dsn, GUESTFEED_SHUTDOWN_GRACE_S="5")
        event = await world.event()
        user, _ = await world.member(event)
        w = await Watch.open(c.feed, event, c.pinning(user), model=MODELS["v2"])
        started = asyncio.get_running_loop().time()
        await c.stack.aclose()  # the replica's shutdown; the client's channel stays open
        assert asyncio.get_running_loop().time() - started < 3
        await w.ended.wait()
        await c.channel.close()
        assert w.error is not None and w.error.code() == grpc.StatusCode.UNAVAILABLE
        info = error_info(w.error)
        assert info is not None and info.reason == "SERVER_SHUTTING_DOWN"
