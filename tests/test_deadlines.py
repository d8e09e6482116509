"""Deadlines and cancels reach PostgreSQL: an ended call leaves no query running there.

Every feed query gets the RPC's remaining deadline, capped by
GUESTFEED_QUERY_TIMEOUT_S. Here a feed query hangs behind an ACCESS
EXCLUSIVE lock on `messages`, held by the test on a database of its own and
always rolled back. The call then ends (its deadline, the cap, the client's
cancel) and the server's backend must stop waiting within a second: the
query was cancelled in PostgreSQL, not merely abandoned by the client. A
cancel that cannot reach the server (asyncpg sends it on a new connection)
must not hold the call, the pool or a shutdown for longer than the cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import asyncpg
import grpc
import pytest

from guestfeed.v1 import feed_pb2
from guestfeed_server.storage.migrate import migrate

from .conftest import Client, scratch_database, start_client
from .factory import World
from .helpers import error_info

# The service's pool connections (storage/database.py).
SERVER_APP = "guestfeed"
# No background query during a test: only the calls under test touch the pool.
QUIET = {"GUESTFEED_HEALTH_INTERVAL_S": "60", "GUESTFEED_ROLLOUT_REFRESH_S": "60"}
MESSAGES = 5
# A frontend's CancelRequest: length 16, code 80877102 (PostgreSQL protocol).
CANCEL_REQUEST = (16, 80877102)


@dataclass(frozen=True)
class Feed:
    """A migrated database of this module's own, with one guest and their feed."""

    dsn: str
    event: uuid.UUID
    user: uuid.UUID


@pytest.fixture(scope="module")
async def feed_db(server_dsn: str) -> AsyncIterator[Feed]:
    async with scratch_database(server_dsn, "guestfeed_deadlines") as (_, dsn):
        pool = await asyncpg.create_pool(
            dsn, min_size=1, max_size=2, server_settings={"application_name": "test-admin"}
        )
        assert pool is not None
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
            world = World(pool)
            event = await world.event()
            user, guest = await world.member(event)
            for _ in range(MESSAGES):
                mid = await world.message(event, "announcement")
                await world.deliver(mid, guest_id=guest, user_id=user)
        finally:
            await pool.close()
        yield Feed(dsn, event, user)


@pytest.fixture(scope="module")
async def server(feed_db: Feed) -> AsyncIterator[Client]:
    """A replica whose query timeout (5 s) is far longer than the calls' deadlines."""
    c = await start_client(feed_db.dsn, GUESTFEED_QUERY_TIMEOUT_S="5", **QUIET)
    yield c
    await c.stop()


@pytest.fixture
async def observer(feed_db: Feed) -> AsyncIterator[asyncpg.Connection]:
    """Reads pg_stat_activity, each statement its own snapshot (autocommit)."""
    conn = await asyncpg.connect(feed_db.dsn, server_settings={"application_name": "test-observer"})
    yield conn
    await conn.close()


@contextlib.asynccontextmanager
async def messages_locked(dsn: str) -> AsyncIterator[None]:
    """Every feed query waits while this holds `messages` (rolled back on the way out)."""
    locker = await asyncpg.connect(dsn, server_settings={"application_name": "test-locker"})
    try:
        await locker.execute("BEGIN; LOCK TABLE public.messages IN ACCESS EXCLUSIVE MODE")
        yield
    finally:
        try:
            await locker.execute("ROLLBACK")
        finally:
            await locker.close()  # ends the session: the lock goes even if ROLLBACK failed


async def blocked(observer: asyncpg.Connection) -> list[asyncpg.Record]:
    """The server's backends whose query waits for the lock."""
    return await observer.fetch(
        "SELECT pid, state, left(regexp_replace(query, '\\s+', ' ', 'g'), 60) AS query "
        "FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = $1 AND state <> 'idle' AND wait_event_type = 'Lock'",
        SERVER_APP,
    )


async def until_blocked(observer: asyncpg.Connection, within_s: float = 5.0) -> None:
    """Waits for the call's query to be in PostgreSQL, waiting for the lock."""
    deadline = time.monotonic() + within_s
    while not await blocked(observer):
        assert time.monotonic() < deadline, "the feed query never reached PostgreSQL"
        await asyncio.sleep(0.01)


async def until_released(observer: asyncpg.Connection, within_s: float = 1.0) -> float:
    """Seconds until no query of the server waits any more (fails past `within_s`)."""
    start = time.monotonic()
    while rows := await blocked(observer):
        assert time.monotonic() - start < within_s, f"still running in PostgreSQL: {rows}"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def start_call(
    c: Client, feed: Feed, rpc: str, timeout: float
) -> tuple[grpc.aio.Call, asyncio.Future[Any]]:
    """Starts a ListMessages or StreamMessages call; returns it and its first result."""
    metadata = Client.auth(feed.user)
    if rpc == "list":
        unary = c.feed.ListMessages(
            feed_pb2.ListMessagesRequest(event_id=str(feed.event), page_size=2),
            metadata=metadata,
            timeout=timeout,
        )
        return unary, asyncio.ensure_future(unary)
    stream = c.feed.StreamMessages(
        feed_pb2.StreamMessagesRequest(event_id=str(feed.event), page_size=2),
        metadata=metadata,
        timeout=timeout,
    )
    return stream, asyncio.ensure_future(stream.read())


async def read_feed(c: Client, feed: Feed) -> list[str]:
    resp = await c.feed.ListMessages(
        feed_pb2.ListMessagesRequest(event_id=str(feed.event)),
        metadata=Client.auth(feed.user),
        timeout=10,
    )
    return [m.message_id for m in resp.messages]


RPCS = pytest.mark.parametrize("rpc", ["list", "stream"])


class TestEndedCallsStopTheirQuery:
    @RPCS
    async def test_an_expired_deadline_cancels_the_query(
        self, server: Client, feed_db: Feed, observer: asyncpg.Connection, rpc: str
    ) -> None:
        """DEADLINE_EXCEEDED at the client's 0.8 s deadline, and within 1 s the server's
        query no longer runs in PostgreSQL (well before the 5 s cap)."""
        assert len(await read_feed(server, feed_db)) == MESSAGES  # statements prepared
        async with messages_locked(feed_db.dsn):
            _, outcome = start_call(server, feed_db, rpc, timeout=0.8)
            await until_blocked(observer)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await outcome
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await until_released(observer)
        assert len(await read_feed(server, feed_db)) == MESSAGES

    @RPCS
    async def test_a_client_cancel_cancels_the_query(
        self, server: Client, feed_db: Feed, observer: asyncpg.Connection, rpc: str
    ) -> None:
        """A call cancelled by its client (30 s deadline) stops its query within 1 s."""
        async with messages_locked(feed_db.dsn):
            call, outcome = start_call(server, feed_db, rpc, timeout=30)
            await until_blocked(observer)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await outcome
            await until_released(observer)
        assert len(await read_feed(server, feed_db)) == MESSAGES


class TestQueryTimeoutCap:
    @RPCS
    async def test_the_query_timeout_caps_a_longer_deadline(
        self, feed_db: Feed, observer: asyncpg.Connection, rpc: str
    ) -> None:
        """GUESTFEED_QUERY_TIMEOUT_S=0.5 under a 10 s deadline: the server answers
        UNAVAILABLE (DATABASE_TIMEOUT) after about 0.5 s, its query cancelled."""
        c = await start_client(feed_db.dsn, GUESTFEED_QUERY_TIMEOUT_S="0.5", **QUIET)
        try:
            async with messages_locked(feed_db.dsn):
                started = time.monotonic()
                _, outcome = start_call(c, feed_db, rpc, timeout=10)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await outcome
                took = time.monotonic() - started
                err = caught.value
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err
                info = error_info(err)
                assert info is not None and info.reason == "DATABASE_TIMEOUT"
                assert 0.4 < took < 3.0, took
                await until_released(observer)
        finally:
            await c.stop()


@dataclass
class Hole:
    """A cancel request the proxy swallowed: what it was sent, and whether its client
    has given up on it (closed the connection)."""

    data: bytearray
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class Proxy:
    """A TCP front for the PostgreSQL server that the service connects through.

    With `swallow_cancels` set, a connection that opens with a CancelRequest is
    accepted and never answered or forwarded: to asyncpg, whose cancel goes out
    on a connection of its own, the server is unreachable, as behind a network
    partition. Every other connection is forwarded as usual.
    """

    def __init__(self, upstream: Callable[[], Awaitable[Any]]) -> None:
        self.swallow_cancels = False
        self.holes: list[Hole] = []
        self._upstream = upstream
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def dsn(self, direct: str) -> str:
        """`direct`'s user and database, reached through the proxy in plaintext (so
        the proxy can read a CancelRequest)."""
        parts = urlsplit(direct)
        user = parts.netloc.rpartition("@")[0]
        query = {k: v for k, v in parse_qs(parts.query).items() if k not in ("host", "port")}
        query["sslmode"] = ["disable"]
        netloc = f"{user}@127.0.0.1:{self.port}" if user else f"127.0.0.1:{self.port}"
        return urlunsplit(("postgresql", netloc, parts.path, urlencode(query, doseq=True), ""))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            # Every frontend message that opens a connection starts with 8 bytes:
            # its length and its code.
            head = await reader.readexactly(8)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        if self.swallow_cancels and struct.unpack("!ll", head) == CANCEL_REQUEST:
            hole = Hole(bytearray(head))
            self.holes.append(hole)
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(4096):
                    hole.data += chunk
            hole.closed.set()
            return
        up_reader, up_writer = await self._upstream()
        self._writers.append(up_writer)
        up_writer.write(head)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.close()
        await self._server.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()  # one side gone: the other follows, as a real socket would


def upstream_of(server_dsn: str) -> Callable[[], Awaitable[Any]]:
    """Opens a connection to the server behind `server_dsn` (a Unix socket or TCP)."""
    parts = urlsplit(server_dsn)
    query = parse_qs(parts.query)
    port = parts.port or int(query.get("port", ["5432"])[0])
    host = query.get("host", [parts.hostname or "127.0.0.1"])[0]
    if host.startswith("/"):
        path = f"{host}/.s.PGSQL.{port}"
        return lambda: asyncio.open_unix_connection(path)
    return lambda: asyncio.open_connection(host, port)


class TestUnreachableCancel:
    async def test_a_cancel_that_cannot_reach_the_server_holds_nothing_up(
        self, feed_db: Feed
    ) -> None:
        """A query that times out (cap 1 s) answers UNAVAILABLE at once even though its
        CancelRequest goes unanswered; asyncpg gives the cancel up after the cap and
        drops the connection, so the pool's only slot is free again and the server
        stops promptly. Without a bound the slot would wait for the cancel forever."""
        cap = 1.0
        proxy = Proxy(upstream_of(feed_db.dsn))
        await proxy.start()
        try:
            c = await start_client(
                proxy.dsn(feed_db.dsn),
                GUESTFEED_QUERY_TIMEOUT_S=str(cap),
                GUESTFEED_DB_POOL_MIN="1",
                GUESTFEED_DB_POOL_MAX="1",
                **QUIET,
            )
            try:
                assert len(await read_feed(c, feed_db)) == MESSAGES
                proxy.swallow_cancels = True
                async with messages_locked(feed_db.dsn):
                    started = time.monotonic()
                    _, outcome = start_call(c, feed_db, "list", timeout=10)
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await outcome
                    took = time.monotonic() - started
                    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value
                    assert took < cap + 1.0, took
                    hole = await _swallowed_cancel(proxy)
                    # asyncpg bounds its cancel by the command timeout (the cap).
                    await asyncio.wait_for(hole.closed.wait(), cap + 2.0)
                # The pool's one connection: a cancel still pending would hold it.
                assert len(await read_feed(c, feed_db)) == MESSAGES
            finally:
                stopping = time.monotonic()
                await asyncio.wait_for(c.stop(), 15)
                assert time.monotonic() - stopping < 5
        finally:
            await proxy.close()


async def _swallowed_cancel(proxy: Proxy, within_s: float = 3.0) -> Hole:
    """The CancelRequest that asyncpg sent into the proxy."""
    deadline = time.monotonic() + within_s
    while not proxy.holes:
        assert time.monotonic() < deadline, "asyncpg sent no CancelRequest"
        await asyncio.sleep(0.01)
    (hole,) = proxy.holes
    return hole
