"""StreamMessages: successive pages of the feed, max_messages, resuming, cancellation, access."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import grpc
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from guestfeed.v1 import feed_pb2, feed_pb2_grpc
from guestfeed_server.feed.reader import STREAM_BATCH

from .conftest import Client
from .factory import World
from .helpers import MODELS, error_info
from .oracle import Expected, feed

TYPES = {
    "direct": feed_pb2.MESSAGE_TYPE_DIRECT,
    "announcement": feed_pb2.MESSAGE_TYPE_ANNOUNCEMENT,
    "channel": feed_pb2.MESSAGE_TYPE_CHANNEL,
}


@dataclass
class Feed:
    """One guest's event with a mixed feed, and the oracle's answer per model."""

    world: World
    event: uuid.UUID
    user: uuid.UUID
    expected: dict[str, list[Expected]]


@pytest.fixture(scope="module")
async def mixed(admin_pool: asyncpg.Pool) -> Feed:
    """A feed with every message type, tied timestamps, and v1/v2 differences (read-only)."""
    world = World(admin_pool)
    event = await world.event()
    user, guest = await world.member(event, tags=["vip"], full_name="Streamer")
    other, other_guest = await world.member(event, tags=["other"])
    for _ in range(5):  # delivered to the user: both models
        mid = await world.message(event, "announcement")
        await world.deliver(mid, guest_id=guest, user_id=user)
    tie = world.tick()
    for _ in range(4):  # a bulk send: same created_at, ordered by id
        mid = await world.message(event, "announcement", created_at=tie)
        await world.deliver(mid, guest_id=guest, user_id=user, status="sent")
    for _ in range(3):  # undelivered announcements: v2 only
        await world.message(event, "announcement")
    for tags in (["vip"], None, []):  # channels targeting the user: v2 only
        await world.channel(event, tags)
    mid = await world.channel(event, ["other"])  # not targeted, but delivered: v1 only
    await world.deliver(mid, user_id=user)
    for _ in range(3):  # directs delivered to the guest row only: v2 only
        mid = await world.message(event, "direct")
        await world.deliver(mid, guest_id=guest)
    for _ in range(2):  # directs delivered to the user: both
        mid = await world.message(event, "direct")
        await world.deliver(mid, guest_id=guest, user_id=user, status="failed")
    for _ in range(2):  # the user's own messages: both
        await world.message(event, "direct", sender=user, created_at=tie)
    mid = await world.message(event, "direct", sender=other)  # someone else's direct: neither
    await world.deliver(mid, guest_id=other_guest, user_id=other)
    expected = {m: feed(world, event, user, m) for m in MODELS}
    assert len(expected["v1"]) == 14 and len(expected["v2"]) == 22  # the set-up itself
    return Feed(world, event, user, expected)


def as_tuple(m: feed_pb2.GuestMessage) -> tuple[object, ...]:
    return (
        m.message_id,
        m.message_type,
        m.is_own_message,
        m.is_delivery_backed,
        m.delivery_status,
        m.sender_name,
    )


def expected_tuple(e: Expected) -> tuple[object, ...]:
    return (
        str(e.message_id),
        TYPES[e.type],
        e.is_own,
        e.is_delivery_backed,
        e.delivery_status,
        e.sender_name,
    )


async def stream(
    client: Client, event: uuid.UUID, user: uuid.UUID, model: str | None = None, **fields: object
) -> list[feed_pb2.StreamMessagesResponse]:
    """Every response of one StreamMessages call."""
    request = feed_pb2.StreamMessagesRequest(
        event_id=str(event), read_model=MODELS[model] if model else 0, **fields
    )  # type: ignore[arg-type]
    return [r async for r in client.feed.StreamMessages(request, metadata=Client.pinning(user))]


async def rest_from(
    client: Client, event: uuid.UUID, user: uuid.UUID, model: str, token: str, page_size: int = 50
) -> list[str]:
    """Message ids from ListMessages, starting at `token` and following it to the end."""
    out: list[str] = []
    while True:
        resp = await client.feed.ListMessages(
            feed_pb2.ListMessagesRequest(
                event_id=str(event), page_size=page_size, page_token=token, read_model=MODELS[model]
            ),
            metadata=Client.pinning(user),
        )
        out.extend(m.message_id for m in resp.messages)
        token = resp.next_page_token
        if not token:
            return out


def ids(responses: list[feed_pb2.StreamMessagesResponse]) -> list[str]:
    return [m.message_id for r in responses for m in r.messages]


def expected_ids(f: Feed, model: str) -> list[str]:
    return [str(e.message_id) for e in f.expected[model]]


class TestWholeFeed:
    @pytest.mark.parametrize("model", list(MODELS))
    @pytest.mark.parametrize("page_size", [1, 3, 7, 22, 50])
    async def test_pages_concatenate_to_the_oracle_feed(
        self, client: Client, mixed: Feed, model: str, page_size: int
    ) -> None:
        """The stream is the whole feed in order, in pages of page_size (the last may be short)."""
        responses = await stream(client, mixed.event, mixed.user, model, page_size=page_size)
        got = [as_tuple(m) for r in responses for m in r.messages]
        assert got == [expected_tuple(e) for e in mixed.expected[model]]
        sizes = [len(r.messages) for r in responses]
        assert all(s == page_size for s in sizes[:-1])
        assert 1 <= sizes[-1] <= page_size
        assert {r.read_model for r in responses} == {MODELS[model]}
        assert responses[-1].next_page_token == ""
        assert all(r.next_page_token for r in responses[:-1])

    @pytest.mark.parametrize("model", list(MODELS))
    async def test_each_token_resumes_right_after_its_response(
        self, client: Client, mixed: Feed, model: str
    ) -> None:
        """ListMessages from any response's token returns exactly the messages after it."""
        want = expected_ids(mixed, model)
        responses = await stream(client, mixed.event, mixed.user, model, page_size=4)
        seen = 0
        for r in responses:
            seen += len(r.messages)
            if seen < len(want):
                assert (
                    await rest_from(
                        client, mixed.event, mixed.user, model, r.next_page_token, page_size=3
                    )
                    == want[seen:]
                )
            else:
                assert r.next_page_token == ""

    async def test_default_page_size_is_50(self, client: Client, world: World) -> None:
        """page_size 0 streams pages of 50."""
        event = await world.event()
        user, _ = await world.member(event)
        for _ in range(53):
            await world.message(event, "direct", sender=user)
        responses = await stream(client, event, user, "v1")
        assert [len(r.messages) for r in responses] == [50, 3]
        assert ids(responses) == [str(e.message_id) for e in feed(world, event, user, "v1")]

    @pytest.mark.parametrize("model", list(MODELS))
    async def test_empty_feed_is_one_empty_response(
        self, client: Client, world: World, model: str
    ) -> None:
        """A guest with nothing to read gets exactly one response: no messages, empty token."""
        event = await world.event()
        user, _ = await world.member(event)
        other, other_guest = await world.member(event)
        mid = await world.message(event, "direct", sender=other)
        await world.deliver(mid, guest_id=other_guest, user_id=other)
        assert feed(world, event, user, model) == []
        responses = await stream(client, event, user, model, page_size=5, max_messages=3)
        assert len(responses) == 1
        assert list(responses[0].messages) == []
        assert responses[0].next_page_token == ""
        assert responses[0].read_model == MODELS[model]


class TestMaxMessages:
    @settings(
        max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        model=st.sampled_from(list(MODELS)),
        page_size=st.integers(1, 8),
        max_messages=st.integers(0, 25),
    )
    @example(model="v1", page_size=3, max_messages=6)  # a multiple of the page size
    @example(model="v2", page_size=3, max_messages=7)  # not a multiple
    @example(model="v2", page_size=5, max_messages=22)  # exactly the whole history
    @example(model="v1", page_size=7, max_messages=14)  # whole history, a multiple
    @example(model="v1", page_size=4, max_messages=1)
    @example(model="v2", page_size=8, max_messages=0)  # no limit
    async def test_stream_stops_exactly_at_max_messages(
        self, client: Client, mixed: Feed, model: str, page_size: int, max_messages: int
    ) -> None:
        """max_messages=N sends exactly the first N (0: all); the last token resumes at N+1."""
        want = expected_ids(mixed, model)
        n = len(want) if max_messages == 0 else min(max_messages, len(want))
        responses = await stream(
            client, mixed.event, mixed.user, model, page_size=page_size, max_messages=max_messages
        )
        assert ids(responses) == want[:n]
        sizes = [len(r.messages) for r in responses]
        assert all(s == page_size for s in sizes[:-1])
        assert 1 <= sizes[-1] <= page_size
        last = responses[-1].next_page_token
        if n == len(want):
            assert last == ""
        else:
            resp = await mixed_list(client, mixed, model, last, page_size=1)
            assert [m.message_id for m in resp.messages] == [want[n]]

    async def test_limit_beyond_history_ends_with_history(
        self, client: Client, mixed: Feed
    ) -> None:
        """A max_messages above the feed's length streams it all, ending with an empty token."""
        responses = await stream(
            client, mixed.event, mixed.user, "v2", page_size=6, max_messages=1000
        )
        assert ids(responses) == expected_ids(mixed, "v2")
        assert [len(r.messages) for r in responses] == [6, 6, 6, 4]
        assert responses[-1].next_page_token == ""


async def mixed_list(
    client: Client, f: Feed, model: str, token: str, page_size: int
) -> feed_pb2.ListMessagesResponse:
    return await client.feed.ListMessages(
        feed_pb2.ListMessagesRequest(
            event_id=str(f.event), page_size=page_size, page_token=token, read_model=MODELS[model]
        ),
        metadata=Client.pinning(f.user),
    )


class TestStartPoint:
    @pytest.mark.parametrize("model", list(MODELS))
    @pytest.mark.parametrize("skip", [1, 5, 9, 13])
    async def test_stream_starts_after_page_token(
        self, client: Client, mixed: Feed, model: str, skip: int
    ) -> None:
        """A stream given a ListMessages token starts right after that page and runs to the end."""
        want = expected_ids(mixed, model)
        first = await mixed_list(client, mixed, model, "", page_size=skip)
        assert [m.message_id for m in first.messages] == want[:skip]
        responses = await stream(
            client, mixed.event, mixed.user, model, page_size=4, page_token=first.next_page_token
        )
        assert ids(responses) == want[skip:]

    async def test_page_token_and_max_messages_combine(self, client: Client, mixed: Feed) -> None:
        """From a token, max_messages counts from the start point."""
        want = expected_ids(mixed, "v2")
        first = await mixed_list(client, mixed, "v2", "", page_size=5)
        responses = await stream(
            client,
            mixed.event,
            mixed.user,
            "v2",
            page_size=3,
            page_token=first.next_page_token,
            max_messages=7,
        )
        assert ids(responses) == want[5:12]
        after = await mixed_list(client, mixed, "v2", responses[-1].next_page_token, page_size=50)
        assert [m.message_id for m in after.messages] == want[12:]

    async def test_unspecified_model_follows_the_token(self, client: Client, mixed: Feed) -> None:
        """A stream with read_model UNSPECIFIED resumes a V2 token on V2."""
        want = expected_ids(mixed, "v2")
        first = await mixed_list(client, mixed, "v2", "", page_size=10)
        responses = await stream(
            client, mixed.event, mixed.user, None, page_size=5, page_token=first.next_page_token
        )
        assert {r.read_model for r in responses} == {feed_pb2.READ_MODEL_V2}
        assert ids(responses) == want[10:]

    async def test_token_of_another_model_is_invalid(self, client: Client, mixed: Feed) -> None:
        """A V1 token streamed with an explicit V2 read_model is INVALID_ARGUMENT on page_token."""
        first = await mixed_list(client, mixed, "v1", "", page_size=3)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream(client, mixed.event, mixed.user, "v2", page_token=first.next_page_token)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info = error_info(caught.value)
        assert info is not None and info.reason == "PAGE_TOKEN_MISMATCH"


@pytest.fixture
async def long_feed(world: World) -> AsyncIterator[tuple[World, uuid.UUID, uuid.UUID, uuid.UUID]]:
    """(world, event, user, guest row): 20 announcements delivered to the guest."""
    event = await world.event()
    user, guest = await world.member(event)
    for _ in range(20):
        # A page (two messages) is several times the 64 KiB HTTP/2 window of a
        # channel without BDP probing, so the server cannot run pages ahead of
        # the reader however fast it reads them (at 40 kB a message, a fast
        # server sometimes got two more pages out before a removal landed).
        # Twenty of them still fit one 4 MiB ListMessages response.
        mid = await world.message(event, "announcement", content="x" * 150_000)
        await world.deliver(mid, guest_id=guest, user_id=user)
    yield world, event, user, guest


@pytest.fixture
async def slow_reader(client: Client) -> AsyncIterator[feed_pb2_grpc.GuestFeedServiceStub]:
    """A stub on a channel with a fixed 64 KiB flow-control window."""
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{client.app.port}", options=[("grpc.http2.bdp_probe", 0)]
    )
    yield feed_pb2_grpc.GuestFeedServiceStub(channel)
    await channel.close()


class TestCancellationAndAccess:
    async def test_cancel_mid_stream_leaves_server_healthy(
        self,
        client: Client,
        long_feed: tuple[World, uuid.UUID, uuid.UUID, uuid.UUID],
        slow_reader: feed_pb2_grpc.GuestFeedServiceStub,
    ) -> None:
        """Cancelling after one page ends the call CANCELLED; the server frees it and serves on."""
        world, event, user, _ = long_feed
        call = slow_reader.StreamMessages(
            feed_pb2.StreamMessagesRequest(event_id=str(event), page_size=2),
            metadata=Client.pinning(user),
        )
        first = await call.read()
        assert isinstance(first, feed_pb2.StreamMessagesResponse) and len(first.messages) == 2
        assert call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call.read()
        assert await call.code() == grpc.StatusCode.CANCELLED
        assert call.done()

        pool = client.app.db.pool
        for _ in range(100):  # the cancelled handler gives its connection back
            if pool.get_idle_size() == pool.get_size():
                break
            await asyncio.sleep(0.02)
        assert pool.get_idle_size() == pool.get_size()
        resp = await client.feed.ListMessages(
            feed_pb2.ListMessagesRequest(event_id=str(event), page_size=50),
            metadata=Client.pinning(user),
        )
        assert [m.message_id for m in resp.messages] == [
            str(e.message_id) for e in feed(world, event, user, "v1")
        ]

    async def test_guest_removed_mid_stream_is_denied_at_a_later_batch(
        self,
        client: Client,
        world: World,
        slow_reader: feed_pb2_grpc.GuestFeedServiceStub,
    ) -> None:
        """A guest removed while streaming gets PERMISSION_DENIED instead of the rest: every
        database batch re-checks access, and at most the batches read before the removal
        (one being sent, one read ahead) still arrive."""
        event = await world.event()
        user, guest = await world.member(event)
        for _ in range(3 * STREAM_BATCH + 10):
            # 4 kB each: a batch is several times the 64 KiB window of a channel
            # without BDP probing, so the server cannot run ahead of the reader.
            mid = await world.message(event, "announcement", content="x" * 4000)
            await world.deliver(mid, guest_id=guest, user_id=user)
        want = [str(e.message_id) for e in feed(world, event, user, "v2")]
        call = slow_reader.StreamMessages(
            feed_pb2.StreamMessagesRequest(
                event_id=str(event), page_size=2, read_model=feed_pb2.READ_MODEL_V2
            ),
            metadata=Client.pinning(user),
        )
        first = await call.read()
        assert isinstance(first, feed_pb2.StreamMessagesResponse)
        got = [m.message_id for m in first.messages]
        await world.remove(guest)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            while (resp := await call.read()) is not grpc.aio.EOF:
                got.extend(m.message_id for m in resp.messages)  # type: ignore[union-attr]
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        info = error_info(caught.value)
        assert info is not None and info.reason == "NOT_EVENT_GUEST"
        assert got == want[: len(got)]
        assert 2 <= len(got) <= 2 * STREAM_BATCH < len(want)

    async def test_non_guest_is_denied_before_any_page(self, client: Client, world: World) -> None:
        """A user with no guest row gets PERMISSION_DENIED and no messages."""
        event = await world.event()
        await world.message(event, "announcement")
        stranger = await world.user()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream(client, event, stranger, "v2")
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    async def test_removed_guest_is_denied_before_any_page(
        self, client: Client, world: World
    ) -> None:
        """A guest whose row is removed gets PERMISSION_DENIED from the first page."""
        event = await world.event()
        user = await world.user()
        await world.guest(event, user, removed=True)
        await world.message(event, "announcement")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream(client, event, user, "v2")
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    async def test_guest_of_another_event_is_denied(
        self, client: Client, world: World, mixed: Feed
    ) -> None:
        """Being a guest elsewhere grants nothing here: PERMISSION_DENIED."""
        elsewhere = await world.event()
        user, _ = await world.member(elsewhere)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream(client, mixed.event, user, "v1")
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
