"""The soak's clients: each loops picking a kind of call by weight and records how it ended.

Kinds (`KINDS`): `page` (ListMessages, half the time continuing the
client's previous page by its token), `stream_read` (StreamMessages read to
its end or to `max_messages`), `stream_abandoned` (one response read, then
the stream is left unread and held before it is cancelled: the idle-stream
pattern), `cancel` (a page or a stream cancelled at a random moment),
`bad_token` (garbage, expired, wrongly signed or missing tokens) and
`rollout_flip` (UpdateRolloutConfig with a service_role token). Flips are not
weighted: one is due every `flip_every_s`, taken by whichever client looks
first, so the rollout changes at a steady low rate whatever the throughput.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import grpc

from guestfeed.v1 import feed_pb2, feed_pb2_grpc, rollout_pb2, rollout_pb2_grpc
from guestfeed_server.auth import Role, mint

from .soak_kinds import (
    BAD_TOKEN,
    CANCEL,
    DEFAULT_WEIGHTS,
    KINDS,
    PAGE,
    ROLLOUT_FLIP,
    STREAM_ABANDONED,
    STREAM_READ,
    KindStats,
)

Metadata = tuple[tuple[str, str], ...]

PAGE_TIMEOUT_S = 10.0
STREAM_TIMEOUT_S = 60.0
_MODELS = (feed_pb2.READ_MODEL_UNSPECIFIED, feed_pb2.READ_MODEL_V1, feed_pb2.READ_MODEL_V2)
_MODEL_WEIGHTS = (70, 15, 15)  # mostly as the rollout decides, so flips matter


@dataclass(frozen=True)
class Guest:
    """A guest with an account, as a caller: the event and a valid token."""

    event_id: str
    user_id: uuid.UUID
    metadata: Metadata


@dataclass
class Load:
    """What every client shares: stubs, callers, secrets, the stats and the flip clock."""

    feeds: list[feed_pb2_grpc.GuestFeedServiceAsyncStub]
    rollouts: list[rollout_pb2_grpc.RolloutServiceAsyncStub]
    guests: list[Guest]
    secret: str
    service_metadata: Metadata
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    flip_every_s: float = 1.0
    hold_s: tuple[float, float] = (1.0, 5.0)
    max_held: int = 100
    held: set[asyncio.Task[None]] = field(default_factory=set)
    peak_held: int = 0
    unheld: int = 0
    stats: dict[str, KindStats] = field(default_factory=lambda: {k: KindStats() for k in KINDS})
    next_flip: float = 0.0

    def __post_init__(self) -> None:
        weighted = set(KINDS) - {ROLLOUT_FLIP}  # flips come by the clock, not by weight
        if not self.weights or set(self.weights) - weighted:
            raise ValueError(f"weights must name some of {sorted(weighted)}, got {self.weights}")
        if not self.guests:
            raise ValueError("no guest to call as: the dataset has no guest with an account")

    def record(
        self,
        kind: str,
        status: str,
        started: float,
        *,
        first: float | None = None,
        messages: int = 0,
    ) -> None:
        """One finished call (times from `time.perf_counter()`)."""
        s = self.stats[kind]
        s.total_ms.append((time.perf_counter() - started) * 1000)
        if first is not None:
            s.first_ms.append((first - started) * 1000)
        s.statuses[status] += 1
        s.messages += messages

    def flip_due(self) -> bool:
        """True for the one client that takes a due flip (they share one event loop)."""
        now = time.perf_counter()
        if now < self.next_flip:
            return False
        self.next_flip = now + self.flip_every_s
        return True


@dataclass
class _Client:
    load: Load
    rng: random.Random
    feed: feed_pb2_grpc.GuestFeedServiceAsyncStub
    rollout: rollout_pb2_grpc.RolloutServiceAsyncStub
    stop_at: float
    # The previous page's request (token and all) to continue, if any.
    next_page: tuple[Guest, feed_pb2.ListMessagesRequest] | None = None

    async def run(self) -> None:
        kinds = list(self.load.weights)
        weights = [self.load.weights[k] for k in kinds]
        while time.perf_counter() < self.stop_at:
            if self.load.flip_due():
                await self.rollout_flip()
                continue
            kind = self.rng.choices(kinds, weights)[0]
            await self.calls[kind](self)

    def guest(self) -> Guest:
        return self.rng.choice(self.load.guests)

    def stream_request(
        self, guest: Guest, page_size: int, max_messages: int
    ) -> feed_pb2.StreamMessagesRequest:
        return feed_pb2.StreamMessagesRequest(
            event_id=guest.event_id,
            page_size=page_size,
            read_model=self.rng.choices(_MODELS, _MODEL_WEIGHTS)[0],
            max_messages=max_messages,
        )

    async def page(self) -> None:
        if self.next_page is not None and self.rng.random() < 0.5:
            guest, request = self.next_page
        else:
            guest = self.guest()
            request = feed_pb2.ListMessagesRequest(
                event_id=guest.event_id,
                page_size=self.rng.choice((10, 20, 50, 100)),
                read_model=self.rng.choices(_MODELS, _MODEL_WEIGHTS)[0],
            )
        self.next_page = None
        started = time.perf_counter()
        try:
            resp = await self.feed.ListMessages(
                request, metadata=guest.metadata, timeout=PAGE_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            self.load.record(PAGE, exc.code().name, started)
            return
        self.load.record(PAGE, "OK", started, messages=len(resp.messages))
        if resp.next_page_token:
            # A token is valid with the same parameters only: keep them all.
            follow = feed_pb2.ListMessagesRequest()
            follow.CopyFrom(request)
            follow.page_token = resp.next_page_token
            self.next_page = (guest, follow)

    async def stream_read(self) -> None:
        guest = self.guest()
        max_messages = 0 if self.rng.random() < 0.5 else self.rng.randint(100, 1000)
        request = self.stream_request(guest, self.rng.choice((20, 50, 200)), max_messages)
        started = time.perf_counter()
        first: float | None = None
        received = 0
        call = self.feed.StreamMessages(request, metadata=guest.metadata, timeout=STREAM_TIMEOUT_S)
        try:
            async for resp in call:
                if first is None:
                    first = time.perf_counter()
                received += len(resp.messages)
        except grpc.aio.AioRpcError as exc:
            status = exc.code().name
        else:
            status = "OK"
        self.load.record(
            STREAM_READ,
            status,
            started,
            first=time.perf_counter() if first is None else first,
            messages=received,
        )

    async def stream_abandoned(self) -> None:
        guest = self.guest()
        # Small pages: there is always more the server would like to send.
        request = self.stream_request(guest, self.rng.choice((20, 50)), 0)
        started = time.perf_counter()
        call = self.feed.StreamMessages(request, metadata=guest.metadata, timeout=STREAM_TIMEOUT_S)
        try:
            resp = await call.read()
        except grpc.aio.AioRpcError as exc:
            self.load.record(STREAM_ABANDONED, exc.code().name, started, first=time.perf_counter())
            return
        first = time.perf_counter()
        # Anything else is grpc.aio.EOF (not in grpc-stubs): the feed was empty.
        received = len(resp.messages) if isinstance(resp, feed_pb2.StreamMessagesResponse) else 0
        # An app sent to the background leaves its stream open and its user
        # moves on: the stream is held apart from the client, so the client
        # never stalls. At most `max_held` at a time: beyond, it is cancelled
        # at once (counted in `unheld`).
        hold = min(self.rng.uniform(*self.load.hold_s), max(0.0, self.stop_at - first))
        if len(self.load.held) >= self.load.max_held:
            hold = 0.0
            self.load.unheld += 1

        async def abandon() -> None:
            await asyncio.sleep(hold)
            try:
                status = "CANCELLED" if call.cancel() else (await call.code()).name
            except grpc.aio.AioRpcError as exc:
                status = exc.code().name
            self.load.record(STREAM_ABANDONED, status, started, first=first, messages=received)

        if hold > 0:
            self.load.peak_held = max(self.load.peak_held, len(self.load.held) + 1)
        task = asyncio.create_task(abandon())
        self.load.held.add(task)
        task.add_done_callback(self.load.held.discard)

    async def cancel(self) -> None:
        guest = self.guest()
        # Mostly within a page's few milliseconds, sometimes later in a stream.
        delay = self.rng.uniform(0, 0.005) if self.rng.random() < 0.7 else self.rng.uniform(0, 0.1)
        started = time.perf_counter()
        call: grpc.aio.Call
        consume: Callable[[], Awaitable[object]]
        if self.rng.random() < 0.5:
            unary = self.feed.ListMessages(
                feed_pb2.ListMessagesRequest(event_id=guest.event_id, page_size=50),
                metadata=guest.metadata,
                timeout=PAGE_TIMEOUT_S,
            )
            call, consume = unary, lambda: unary
        else:
            stream = self.feed.StreamMessages(
                self.stream_request(guest, 50, 0), metadata=guest.metadata, timeout=STREAM_TIMEOUT_S
            )

            async def drain() -> None:
                async for _ in stream:
                    pass

            call, consume = stream, drain
        timer = asyncio.get_running_loop().call_later(delay, call.cancel)
        try:
            await consume()
            status = "OK"
        except grpc.aio.AioRpcError as exc:
            status = exc.code().name
        except asyncio.CancelledError:
            # Ours (the timer's call.cancel) unless this task itself is being cancelled.
            task = asyncio.current_task()
            if not call.cancelled() or (task is not None and task.cancelling()):
                raise
            status = "CANCELLED"
        finally:
            timer.cancel()
        self.load.record(CANCEL, status, started)

    async def bad_token(self) -> None:
        guest = self.guest()
        variant = self.rng.randrange(4)
        metadata: Metadata
        if variant == 0:
            garbage = base64.urlsafe_b64encode(self.rng.randbytes(48)).decode()
            metadata = (("authorization", f"Bearer {garbage}"),)
        elif variant == 1:
            expired = mint(self.load.secret, guest.user_id, ttl_s=-3600)
            metadata = (("authorization", f"Bearer {expired}"),)
        elif variant == 2:
            forged = mint("not-the-server-secret-" + "x" * 32, guest.user_id)
            metadata = (("authorization", f"Bearer {forged}"),)
        else:
            metadata = ()
        started = time.perf_counter()
        try:
            if self.rng.random() < 0.5:
                await self.feed.ListMessages(
                    feed_pb2.ListMessagesRequest(event_id=guest.event_id),
                    metadata=metadata,
                    timeout=PAGE_TIMEOUT_S,
                )
            else:
                async for _ in self.feed.StreamMessages(
                    feed_pb2.StreamMessagesRequest(event_id=guest.event_id),
                    metadata=metadata,
                    timeout=STREAM_TIMEOUT_S,
                ):
                    pass
            status = "OK"
        except grpc.aio.AioRpcError as exc:
            status = exc.code().name
        self.load.record(BAD_TOKEN, status, started)

    async def rollout_flip(self) -> None:
        metadata = self.load.service_metadata
        started = time.perf_counter()
        try:
            current = await self.rollout.GetRolloutConfig(
                rollout_pb2.GetRolloutConfigRequest(), metadata=metadata, timeout=PAGE_TIMEOUT_S
            )
            # One flip in ten races on purpose: a stale revision must be refused
            # (revision 0 is not stale but missing, an INVALID_ARGUMENT).
            revision = current.config.revision
            stale = 1 if revision > 1 and self.rng.random() < 0.1 else 0
            await self.rollout.UpdateRolloutConfig(
                rollout_pb2.UpdateRolloutConfigRequest(
                    config=rollout_pb2.RolloutConfig(
                        v2_enabled=True, v2_percentage=self.rng.choice((0, 10, 25, 50, 75, 100))
                    ),
                    expected_revision=revision - stale,
                    reason="bench soak: rollout flip",
                ),
                metadata=metadata,
                timeout=PAGE_TIMEOUT_S,
            )
            status = "OK"
        except grpc.aio.AioRpcError as exc:
            status = exc.code().name
        self.load.record(ROLLOUT_FLIP, status, started)

    calls: ClassVar[Mapping[str, Callable[[_Client], Awaitable[None]]]] = {
        PAGE: page,
        STREAM_READ: stream_read,
        STREAM_ABANDONED: stream_abandoned,
        CANCEL: cancel,
        BAD_TOKEN: bad_token,
    }


def service_metadata(secret: str) -> Metadata:
    """A service_role caller for the rollout admin RPCs."""
    token = mint(secret, uuid.uuid4(), role=Role.SERVICE_ROLE, ttl_s=24 * 3600)
    return (("authorization", f"Bearer {token}"),)


async def run_clients(load: Load, clients: int, seconds: float, seed: int) -> float:
    """`clients` concurrent clients for `seconds`; returns the wall-clock seconds of the load.

    Clients stop starting calls at the deadline and finish the one under way
    (an abandoned stream's hold is cut to the time left).
    """
    started = time.perf_counter()
    stop_at = started + seconds
    load.next_flip = started + min(load.flip_every_s, seconds / 2)
    workers = [
        _Client(
            load=load,
            rng=random.Random(seed * 1_000_003 + k),
            feed=load.feeds[k % len(load.feeds)],
            rollout=load.rollouts[k % len(load.rollouts)],
            stop_at=stop_at,
        )
        for k in range(clients)
    ]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        await asyncio.gather(*tasks)
        # Held streams end by the deadline too (their hold is cut to it).
        await asyncio.gather(*load.held)
    finally:
        # One client's failure (a bug here) stops the others before it is raised.
        for t in [*tasks, *load.held]:
            t.cancel()
        await asyncio.gather(*tasks, *load.held, return_exceptions=True)
    return time.perf_counter() - started
