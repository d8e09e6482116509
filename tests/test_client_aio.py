"""The asyncio client against the real server: tokens, deadlines, paging, errors, resume.

Resuming is exercised through a proxy (a grpc.aio server of the test's own in
front of the real one) that breaks chosen calls with UNAVAILABLE, so the
pages and tokens on either side of the break are the service's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from guestfeed.v1 import feed_pb2, feed_pb2_grpc, rollout_pb2, rollout_pb2_grpc
from guestfeed_client import GuestFeedClient, RetryPolicy, RPCError
from guestfeed_server.auth import Role

from .conftest import Client
from .factory import World
from .oracle import feed

V2 = feed_pb2.READ_MODEL_V2
if TYPE_CHECKING:  # not subscriptable at run time
    Context = grpc.aio.ServicerContext[Any, Any]
FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)


async def event_with(world: World, n: int) -> tuple[uuid.UUID, uuid.UUID, list[str]]:
    """An event with n announcements: (event, guest user, the guest's V2 feed)."""
    event = await world.event()
    user, _ = await world.member(event)
    for _ in range(n):
        await world.message(event, "announcement")
    return event, user, [str(e.message_id) for e in feed(world, event, user, "v2")]


def service(user: uuid.UUID) -> str:
    """A service caller reading `user`'s feed: it may name the read model."""
    return Client.token(user, Role.SERVICE_ROLE)


class TestTokensAndDeadlines:
    async def test_token_provider_is_called_for_every_call(
        self, client: Client, world: World
    ) -> None:
        """A rotating provider (plain or async) is asked again for each call."""
        event = await world.event()
        user, _ = await world.member(event)
        outsider = await world.user()
        issued = [Client.token(outsider), Client.token(user)]

        async def rotating() -> str:
            return issued.pop(0)

        for provider in (rotating, lambda: issued.pop(0)):
            issued[:] = [Client.token(outsider), Client.token(user)]
            gf = GuestFeedClient(client.channel, provider)
            with pytest.raises(RPCError) as caught:
                await gf.list_messages(str(event))
            assert caught.value.code is grpc.StatusCode.PERMISSION_DENIED
            await gf.list_messages(str(event))
            assert issued == []

    async def test_default_deadline_applies_unless_a_call_names_its_own(
        self, client: Client, world: World
    ) -> None:
        """A client default too short for any call fails DEADLINE_EXCEEDED, which is not
        retried; a per-call timeout overrides the default."""
        event, user, _ = await event_with(world, 1)
        gf = GuestFeedClient(client.channel, service(user), timeout=1e-6)
        with pytest.raises(RPCError) as caught:
            await gf.list_messages(str(event), read_model=V2)
        assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
        assert caught.value.attempts == 1
        page = await gf.list_messages(str(event), read_model=V2, timeout=10)
        assert len(page.messages) == 1


class TestIterMessages:
    @pytest.mark.parametrize("stream", [False, True])
    async def test_yields_the_whole_feed_across_pages(
        self, client: Client, world: World, stream: bool
    ) -> None:
        """Seven messages in pages of three, by ListMessages or over one stream."""
        event, user, expected = await event_with(world, 7)
        gf = GuestFeedClient(client.channel, service(user))
        messages = gf.iter_messages(str(event), page_size=3, read_model=V2, stream=stream)
        assert [m.message_id async for m in messages] == expected
        assert len(expected) == 7

    @pytest.mark.parametrize("stream", [False, True])
    async def test_continues_from_a_page_token_up_to_max_messages(
        self, client: Client, world: World, stream: bool
    ) -> None:
        """From a ListMessages token, the next four messages and no more."""
        event, user, expected = await event_with(world, 9)
        gf = GuestFeedClient(client.channel, service(user))
        first = await gf.list_messages(str(event), page_size=2, read_model=V2)
        rest = gf.iter_messages(
            str(event),
            page_size=3,
            page_token=first.next_page_token,
            read_model=V2,
            max_messages=4,
            stream=stream,
        )
        assert [m.message_id async for m in rest] == expected[2:6]

    async def test_stream_errors_are_rpc_errors(self, client: Client) -> None:
        gf = GuestFeedClient(client.channel, Client.token(uuid.uuid4()))
        with pytest.raises(RPCError) as caught:
            async for _ in gf.iter_messages("nope", stream=True):
                raise AssertionError("an invalid request has no messages")
        assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.violation_reasons == {"event_id": "INVALID_UUID"}


class TestErrors:
    async def test_permission_denied_carries_error_info(self, client: Client, world: World) -> None:
        event = await world.event()
        gf = GuestFeedClient(client.channel, Client.token(await world.user()))
        with pytest.raises(RPCError) as caught:
            await gf.list_messages(str(event))
        err = caught.value
        assert (err.code, err.reason, err.domain) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "NOT_EVENT_GUEST",
            "guestfeed.v1",
        )
        assert str(err).startswith("PERMISSION_DENIED: ")

    async def test_invalid_argument_carries_every_field_violation(self, client: Client) -> None:
        gf = GuestFeedClient(client.channel, Client.token(uuid.uuid4()))
        with pytest.raises(RPCError) as caught:
            await gf.list_messages("not-a-uuid", page_size=-1)
        err = caught.value
        assert err.code is grpc.StatusCode.INVALID_ARGUMENT and err.attempts == 1
        assert err.violation_reasons == {
            "event_id": "INVALID_UUID",
            "page_size": "PAGE_SIZE_NEGATIVE",
        }
        assert all(err.field_violations.values())
        assert "-1" in err.field_violations["page_size"]
        assert err.domain == "guestfeed.v1"


@dataclass
class Flaky(feed_pb2_grpc.GuestFeedServiceServicer, rollout_pb2_grpc.RolloutServiceServicer):
    """Forwards the feed to the real server, failing as told; the rollout is always down."""

    upstream: feed_pb2_grpc.GuestFeedServiceAsyncStub
    break_list_call: int = -1  # the ListMessages call (0-based) to fail once
    break_stream_after: int = -1  # pages the first stream sends before it breaks
    requests: list[feed_pb2.ListMessagesRequest | feed_pb2.StreamMessagesRequest] = field(
        default_factory=list
    )
    rollout_calls: list[str] = field(default_factory=list)
    stream_ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def ListMessages(  # noqa: N802 (gRPC method name)
        self, request: feed_pb2.ListMessagesRequest, context: Context
    ) -> feed_pb2.ListMessagesResponse:
        self.requests.append(request)
        if len(self.requests) - 1 == self.break_list_call:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "proxy: connection reset")
        return await self.upstream.ListMessages(request, metadata=_auth(context))

    async def StreamMessages(  # noqa: N802 (gRPC method name)
        self, request: feed_pb2.StreamMessagesRequest, context: Context
    ) -> AsyncIterator[feed_pb2.StreamMessagesResponse]:
        self.requests.append(request)
        first, sent = len(self.requests) == 1, 0
        call = self.upstream.StreamMessages(request, metadata=_auth(context))
        try:
            async for page in call:
                if first and sent == self.break_stream_after:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "proxy: connection reset")
                yield page
                sent += 1
        finally:
            call.cancel()
            self.stream_ended.set()

    async def GetRolloutConfig(  # noqa: N802 (gRPC method name)
        self, request: rollout_pb2.GetRolloutConfigRequest, context: Context
    ) -> rollout_pb2.GetRolloutConfigResponse:
        self.rollout_calls.append("get")
        await context.abort(grpc.StatusCode.UNAVAILABLE, "proxy: down")
        raise AssertionError("abort raises")

    async def UpdateRolloutConfig(  # noqa: N802 (gRPC method name)
        self, request: rollout_pb2.UpdateRolloutConfigRequest, context: Context
    ) -> rollout_pb2.UpdateRolloutConfigResponse:
        self.rollout_calls.append("update")
        await context.abort(grpc.StatusCode.UNAVAILABLE, "proxy: down")
        raise AssertionError("abort raises")


def _auth(context: Context) -> list[tuple[str, str]]:
    return [(k, v) for k, v in context.invocation_metadata() or () if k == "authorization"]


@contextlib.asynccontextmanager
async def proxied(client: Client, flaky: Flaky) -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server()
    feed_pb2_grpc.add_GuestFeedServiceServicer_to_server(flaky, server)
    rollout_pb2_grpc.add_RolloutServiceServicer_to_server(flaky, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)


class TestResume:
    async def test_paging_retries_the_broken_page_with_its_token(
        self, client: Client, world: World
    ) -> None:
        event, user, expected = await event_with(world, 7)
        flaky = Flaky(feed_pb2_grpc.GuestFeedServiceStub(client.channel), break_list_call=1)
        async with proxied(client, flaky) as channel:
            gf = GuestFeedClient(channel, service(user), retry=FAST)
            messages = gf.iter_messages(str(event), page_size=3, read_model=V2)
            assert [m.message_id async for m in messages] == expected
        tokens = [r.page_token for r in flaky.requests]
        assert len(tokens) == 4 and tokens[0] == "" and tokens[1] == tokens[2] != ""

    async def test_stream_resumes_after_the_last_page_it_delivered(
        self, client: Client, world: World
    ) -> None:
        event, user, expected = await event_with(world, 8)
        flaky = Flaky(feed_pb2_grpc.GuestFeedServiceStub(client.channel), break_stream_after=2)
        async with proxied(client, flaky) as channel:
            gf = GuestFeedClient(channel, service(user), retry=FAST)
            messages = gf.iter_messages(
                str(event), page_size=3, read_model=V2, max_messages=7, stream=True
            )
            assert [m.message_id async for m in messages] == expected[:7]
        first, second = flaky.requests
        assert (first.page_token, first.max_messages) == ("", 7)
        assert second.page_token and second.max_messages == 1

    async def test_stopping_early_cancels_the_stream(self, client: Client, world: World) -> None:
        """aclose() after one message ends the server's stream at once, not at GC."""
        event, user, expected = await event_with(world, 5)
        flaky = Flaky(feed_pb2_grpc.GuestFeedServiceStub(client.channel))
        async with proxied(client, flaky) as channel:
            gf = GuestFeedClient(channel, service(user))
            messages = gf.iter_messages(str(event), page_size=1, read_model=V2, stream=True)
            assert (await anext(messages)).message_id == expected[0]
            await messages.aclose()
            await asyncio.wait_for(flaky.stream_ended.wait(), timeout=5)

    async def test_update_rollout_config_is_not_retried(self, client: Client) -> None:
        """The read is retried up to max_attempts; the write is tried once."""
        flaky = Flaky(feed_pb2_grpc.GuestFeedServiceStub(client.channel))
        async with proxied(client, flaky) as channel:
            gf = GuestFeedClient(channel, "any", retry=RetryPolicy(3, 0.001, 0.001))
            with pytest.raises(RPCError) as read:
                await gf.get_rollout_config()
            with pytest.raises(RPCError) as write:
                await gf.update_rollout_config(
                    rollout_pb2.RolloutConfig(), expected_revision=1, reason="r"
                )
        assert (read.value.attempts, write.value.attempts) == (3, 1)
        assert flaky.rollout_calls == ["get", "get", "get", "update"]
        assert write.value.code is grpc.StatusCode.UNAVAILABLE
