"""What the WatchMessages tests share: writers that commit like the host app, and a watch.

The `World` factory writes explicit timestamps (for paging tests); live
updates depend on `created_at` being the column default, `now()` (the
writing transaction's start), so these writers leave it to PostgreSQL and
read it back. A row enters the `World` (and so the oracle) only when its
transaction commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import asyncpg
import grpc

from guestfeed.v1 import feed_pb2, feed_pb2_grpc
from guestfeed_server.feed.watch_hub import FRESH_S

from .conftest import Client
from .factory import Delivery, Message, World


@dataclass
class Tx:
    """An open writer transaction; its rows reach the World on commit."""

    world: World
    conn: asyncpg.Connection
    tx: asyncpg.transaction.Transaction
    messages: list[Message] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    done: bool = False

    async def message(
        self,
        event: uuid.UUID,
        type: str,
        *,
        sender: uuid.UUID | None = None,
        scheduled_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        mid = self.world.new_id()
        text = f"{type} {mid.hex[:6]}"
        at = await self.conn.fetchval(
            "INSERT INTO public.messages (id, event_id, sender_user_id, content, message_type, "
            "scheduled_message_id) VALUES ($1, $2, $3, $4, $5::public.message_type_enum, $6) "
            "RETURNING created_at",
            mid,
            event,
            sender,
            text,
            type,
            scheduled_id,
        )
        self.messages.append(Message(mid, event, sender, type, scheduled_id, at, text))
        return mid

    async def deliver(
        self,
        message_id: uuid.UUID,
        *,
        guest_id: uuid.UUID | None = None,
        user_id: uuid.UUID | None = None,
        status: str = "sent",
    ) -> uuid.UUID:
        did = self.world.new_id()
        at = await self.conn.fetchval(
            "INSERT INTO public.message_deliveries "
            "(id, message_id, guest_id, user_id, phone_number, sms_status) "
            "VALUES ($1, $2, $3, $4, '+15550001111', $5) RETURNING created_at",
            did,
            message_id,
            guest_id,
            user_id,
            status,
        )
        self.deliveries.append(Delivery(did, message_id, guest_id, user_id, status, at))
        return did

    async def commit(self) -> None:
        self.done = True
        await self.tx.commit()
        self.world.messages.update({m.id: m for m in self.messages})
        self.world.deliveries.extend(self.deliveries)

    async def rollback(self) -> None:
        self.done = True
        await self.tx.rollback()


@contextlib.asynccontextmanager
async def writer(world: World) -> AsyncIterator[Tx]:
    """A transaction on a connection of its own, committed when the block ends
    (rolled back on an error); `tx.commit()` inside the block commits earlier."""
    conn = await world.pool.acquire()
    try:
        tx = conn.transaction()
        await tx.start()
        t = Tx(world, conn, tx)
        try:
            yield t
        except BaseException:
            if not t.done:
                await t.rollback()
            raise
        if not t.done:
            await t.commit()
    finally:
        await world.pool.release(conn)


async def announce(world: World, event: uuid.UUID, **kw: uuid.UUID | None) -> uuid.UUID:
    """One announcement in a transaction of its own."""
    async with writer(world) as tx:
        return await tx.message(event, "announcement", **kw)


@dataclass
class Watch:
    """A WatchMessages call read in the background into `responses`."""

    call: grpc.aio.UnaryStreamCall  # type: ignore[type-arg]
    responses: list[feed_pb2.WatchMessagesResponse] = field(default_factory=list)
    error: grpc.aio.AioRpcError | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    # time.monotonic() at which each message id arrived.
    arrival: dict[str, float] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        stub: feed_pb2_grpc.GuestFeedServiceStub,
        event: uuid.UUID,
        metadata: Sequence[tuple[str, str]],
        *,
        token: str = "",
        model: int = feed_pb2.READ_MODEL_UNSPECIFIED,
        live: bool = True,
    ) -> Watch:
        """Opens the watch; with `live`, returns once its first response came."""
        call = stub.WatchMessages(
            feed_pb2.WatchMessagesRequest(
                event_id=str(event), read_model=model, resume_token=token
            ),
            metadata=tuple(metadata),
        )
        w = cls(call)
        w._task = asyncio.create_task(w._read())
        if live:
            await w.until(lambda: bool(w.responses) or w.ended.is_set(), 10)
        return w

    async def _read(self) -> None:
        try:
            async for r in self.call:
                now = time.monotonic()
                for m in r.messages:
                    self.arrival.setdefault(m.message_id, now)
                self.responses.append(r)
                self.arrived.set()
        except grpc.aio.AioRpcError as e:
            self.error = e
        finally:
            self.ended.set()
            self.arrived.set()

    @property
    def ids(self) -> list[str]:
        """Message ids in arrival order (repeats included)."""
        return [m.message_id for r in self.responses for m in r.messages]

    @property
    def token(self) -> str:
        """The last resume_token received."""
        return self.responses[-1].resume_token

    async def until(self, check: object, timeout: float = 10.0) -> None:
        """Waits until `check()` is true (re-checked at every response)."""
        assert callable(check)
        async with asyncio.timeout(timeout):
            while not check():
                self.arrived.clear()
                if check():
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await self.arrived.wait()

    async def wait_ids(self, ids: Sequence[uuid.UUID], timeout: float = 10.0) -> None:
        """Waits until every id has arrived (or the call ended)."""
        want = {str(i) for i in ids}
        await self.until(lambda: want <= set(self.ids) or self.ended.is_set(), timeout)
        assert want <= set(self.ids), (want - set(self.ids), self.error)

    async def close(self) -> None:
        """Cancels the call and waits for the reader."""
        self.call.cancel()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def settle(client: Client, rounds: int = 3) -> None:
    """Waits until the hub has ticked past now (every commit so far is behind it);
    with no watcher (no ticks), until any horizon it hands out is newer than now."""
    hub = client.app.watch
    assert hub is not None
    target = hub.ticks + rounds
    for _ in range(500):  # 10 s
        # A watch closed just before may still be leaving: the hub stops
        # ticking when its last watcher goes, so look again on every round.
        if hub.watchers == 0:
            await asyncio.sleep(FRESH_S + 0.1)
            return
        if hub.ticks >= target:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the hub did not tick {rounds} times in 10 s")
