"""Bounded work per caller: streams read the database in batches, and a caller may hold
only so many streams at once."""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from guestfeed.v1 import feed_pb2, feed_pb2_grpc
from guestfeed_server.feed.reader import STREAM_BATCH
from guestfeed_server.settings import ConfigError

from .conftest import Client
from .conftest import test_settings as settings_for
from .factory import World
from .helpers import error_info
from .telemetry_helpers import Traced, points, server_spans, traced_server
from .tracing import Tracing

LIMITS = {"GUESTFEED_MAX_STREAMS_PER_CALLER": "3", "GUESTFEED_MAX_STREAMS_PER_CALLER_EVENT": "2"}


async def event_with(world: World, n: int, size: int = 100) -> tuple[uuid.UUID, uuid.UUID]:
    """An event whose guest has n delivered announcements of `size` characters."""
    event = await world.event()
    user, guest = await world.member(event)
    for _ in range(n):
        mid = await world.message(event, "announcement", content="x" * size)
        await world.deliver(mid, guest_id=guest, user_id=user)
    return event, user


@contextlib.asynccontextmanager
async def slow(port: int) -> AsyncIterator[feed_pb2_grpc.GuestFeedServiceStub]:
    """A stub on a channel with a fixed 64 KiB window: a stream not read stays open."""
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.http2.bdp_probe", 0)]
    ) as channel:
        yield feed_pb2_grpc.GuestFeedServiceStub(channel)


async def held(
    stub: feed_pb2_grpc.GuestFeedServiceStub, event: uuid.UUID, user: uuid.UUID
) -> grpc.aio.UnaryStreamCall:  # type: ignore[type-arg]
    """A stream that has sent its first response and is left open."""
    call = stub.StreamMessages(
        feed_pb2.StreamMessagesRequest(event_id=str(event), page_size=1),
        metadata=Client.auth(user),
    )
    assert isinstance(await call.read(), feed_pb2.StreamMessagesResponse)
    return call


async def refusal(
    stub: feed_pb2_grpc.GuestFeedServiceStub, event: uuid.UUID, user: uuid.UUID
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await held(stub, event, user)
    return caught.value


@pytest.fixture
async def limited(admin_dsn: str, tracing: Tracing) -> AsyncIterator[Traced]:
    async with traced_server(admin_dsn, tracing, **LIMITS) as t:
        yield t


class TestStreamLimits:
    async def test_a_callers_extra_stream_on_an_event_is_refused_and_counted(
        self, limited: Traced, world: World
    ) -> None:
        """Two open streams on one event: the third is RESOURCE_EXHAUSTED saying the limit
        (STREAM_LIMIT, scope caller_event) and counted; another guest is not affected."""
        event, user = await event_with(world, 300, 4000)
        other, other_row = await world.member(event)
        async with slow(limited.client.app.port) as stub:
            calls = [await held(stub, event, user) for _ in range(2)]
            err = await refusal(stub, event, user)
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "2 streams open on this event" in (err.details() or "")
            info = error_info(err)
            assert info is not None and info.reason == "STREAM_LIMIT"
            assert dict(info.metadata) == {"scope": "caller_event", "limit": "2"}
            refused = points(limited.reader, "guestfeed.streams.refused")
            assert [(a, p.value) for a, p in refused] == [({"guestfeed.limit": "caller_event"}, 1)]
            (active,) = points(limited.reader, "guestfeed.streams.active")
            assert active[1].value == 2
            for _ in range(300):
                mid = await world.message(event, "announcement", content="x" * 4000)
                await world.deliver(mid, guest_id=other_row, user_id=other)
            calls.append(await held(stub, event, other))
            for call in calls:
                call.cancel()

    async def test_the_per_caller_limit_counts_every_event(
        self, limited: Traced, world: World
    ) -> None:
        """Three open streams over two events: a fourth on a third event is refused (scope
        caller); cancelling one frees its place."""
        event_a, user = await event_with(world, 300, 4000)
        event_b, event_c = await world.event(), await world.event()
        for event in (event_b, event_c):
            row = await world.guest(event, user)
            for _ in range(300):
                mid = await world.message(event, "announcement", content="x" * 4000)
                await world.deliver(mid, guest_id=row, user_id=user)
        async with slow(limited.client.app.port) as stub:
            calls = [
                await held(stub, event_a, user),
                await held(stub, event_a, user),
                await held(stub, event_b, user),
            ]
            err = await refusal(stub, event_c, user)
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            info = error_info(err)
            assert info is not None and dict(info.metadata) == {"scope": "caller", "limit": "3"}
            calls.pop().cancel()
            for _ in range(100):  # the server hears of the cancel a moment later
                with contextlib.suppress(grpc.aio.AioRpcError):
                    calls.append(await held(stub, event_c, user))
                    break
                await asyncio.sleep(0.02)
            assert len(calls) == 3
            for call in calls:
                call.cancel()

    async def test_streams_read_to_the_end_free_their_place(
        self, limited: Traced, world: World
    ) -> None:
        """Ten streams one after the other, each read to the end, are all served."""
        event, user = await event_with(world, 5)
        for _ in range(10):
            responses = [
                r
                async for r in limited.client.feed.StreamMessages(
                    feed_pb2.StreamMessagesRequest(event_id=str(event), page_size=2),
                    metadata=Client.auth(user),
                )
            ]
            assert sum(len(r.messages) for r in responses) == 5

    def test_limits_are_whole_numbers_and_per_event_fits_per_caller(self) -> None:
        """0, words, or a per-event limit above the per-caller one are refused by name."""
        for env, needle in (
            ({"GUESTFEED_MAX_STREAMS_PER_CALLER": "0"}, "GUESTFEED_MAX_STREAMS_PER_CALLER must"),
            ({"GUESTFEED_MAX_STREAMS_PER_CALLER_EVENT": "many"}, "_PER_CALLER_EVENT must"),
            (
                {"GUESTFEED_MAX_STREAMS_PER_CALLER": "2"},
                "GUESTFEED_MAX_STREAMS_PER_CALLER_EVENT (4) must not exceed",
            ),
            ({"GUESTFEED_DB_BULK_SHARE": "-1"}, "GUESTFEED_DB_BULK_SHARE must"),
        ):
            with pytest.raises(ConfigError) as caught:
                settings_for(**env)
            assert needle in str(caught.value)


def db_spans(spans: InMemorySpanExporter, trace_id: int) -> int:
    """Queries (asyncpg CLIENT spans) in one RPC's trace."""
    return sum(
        1
        for s in spans.get_finished_spans()
        if s.kind is SpanKind.CLIENT and s.context is not None and s.context.trace_id == trace_id
    )


class TestBatchedReads:
    @pytest.mark.parametrize("page_size", [1, 7, 200])
    async def test_a_stream_reads_the_database_once_per_batch_whatever_the_page_size(
        self,
        admin_dsn: str,
        tracing: Tracing,
        spans: InMemorySpanExporter,
        world: World,
        page_size: int,
    ) -> None:
        """1,000 messages streamed with page_size 1, 7 or 200: every message once, in
        page_size responses, from ceil(1000 / max(page_size, batch)) queries."""
        event, user = await event_with(world, 1000, 20)
        async with traced_server(admin_dsn, tracing) as t:
            spans.clear()
            responses = [
                r
                async for r in t.client.feed.StreamMessages(
                    feed_pb2.StreamMessagesRequest(event_id=str(event), page_size=page_size),
                    metadata=Client.auth(user),
                )
            ]
        sizes = [len(r.messages) for r in responses]
        assert sum(sizes) == 1000 and max(sizes) == page_size
        assert all(r.next_page_token for r in responses[:-1]) and not responses[-1].next_page_token
        (stream,) = [s for s in server_spans(spans) if s.name.endswith("StreamMessages")]
        assert stream.context is not None
        want = math.ceil(1000 / max(page_size, STREAM_BATCH))
        assert db_spans(spans, stream.context.trace_id) == want

    async def test_an_idle_stream_stops_reading_when_the_client_stops(
        self, admin_dsn: str, tracing: Tracing, spans: InMemorySpanExporter, world: World
    ) -> None:
        """page_size 1 and a client that reads one response and then nothing: the server
        reads a few batches (what flow control lets out), not a query per message."""
        event, user = await event_with(world, 2000, 200)
        async with traced_server(admin_dsn, tracing) as t, slow(t.client.app.port) as stub:
            spans.clear()
            call = await held(stub, event, user)
            before = -1
            while (now := len(spans.get_finished_spans())) != before:  # until it is blocked
                before = now
                await asyncio.sleep(0.3)
            call.cancel()
        (stream,) = [s for s in server_spans(spans) if s.name.endswith("StreamMessages")]
        assert stream.context is not None
        # 64 KiB of window holds about 250 responses of 200 characters: 2-4 batches.
        assert db_spans(spans, stream.context.trace_id) <= 5
