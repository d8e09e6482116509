"""The shipped Python clients: blocking on grpc_testing, asyncio on the real server."""

from __future__ import annotations

import threading
import uuid

import grpc
import grpc_testing
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from guestfeed.v1 import feed_pb2
from guestfeed_client import GuestFeedClient, GuestFeedSyncClient, RPCError
from guestfeed_server.auth import Role

from .conftest import Client
from .factory import World
from .oracle import feed

_SERVICE = feed_pb2.DESCRIPTOR.services_by_name["GuestFeedService"]
_LIST = _SERVICE.methods_by_name["ListMessages"]


def _page(ids: list[str], token: str) -> feed_pb2.ListMessagesResponse:
    return feed_pb2.ListMessagesResponse(
        messages=[feed_pb2.GuestMessage(message_id=i) for i in ids],
        next_page_token=token,
        read_model=feed_pb2.READ_MODEL_V1,
    )


class TestSyncClientOnTestingChannel:
    def test_iter_pages_follows_tokens_and_sends_bearer(self) -> None:
        """iter_pages sends the token as Bearer metadata and follows next_page_token to the end."""
        channel = grpc_testing.channel([_SERVICE], grpc_testing.strict_real_time())
        client = GuestFeedSyncClient(channel, "tok-123")
        result: list[list[str]] = []
        worker = threading.Thread(
            target=lambda: result.extend(
                [m.message_id for m in p.messages] for p in client.iter_pages("e", page_size=2)
            )
        )
        worker.start()
        seen_tokens = []
        for response in (_page(["a", "b"], "t1"), _page(["c"], "")):
            metadata, request, rpc = channel.take_unary_unary(_LIST)
            assert ("authorization", "Bearer tok-123") in metadata
            seen_tokens.append(request.page_token)
            rpc.terminate(response, (), grpc.StatusCode.OK, "")
        worker.join(timeout=5)
        assert result == [["a", "b"], ["c"]]
        assert seen_tokens == ["", "t1"]

    def test_rich_error_details_become_rpc_error_fields(self) -> None:
        """A failed call raises RPCError with the code, ErrorInfo reason and field violations."""
        channel = grpc_testing.channel([_SERVICE], grpc_testing.strict_real_time())
        client = GuestFeedSyncClient(channel, "tok")
        raised: list[BaseException] = []

        def call() -> None:
            try:
                client.list_messages("not-a-uuid")
            except RPCError as exc:
                raised.append(exc)

        worker = threading.Thread(target=call)
        worker.start()
        _, _, rpc = channel.take_unary_unary(_LIST)
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field="event_id", description="must be a UUID", reason="INVALID_UUID"
                )
            ]
        )
        info = error_details_pb2.ErrorInfo(
            reason="INVALID_UUID", domain="guestfeed.v1", metadata={"field": "event_id"}
        )
        status = status_pb2.Status(
            code=code_pb2.INVALID_ARGUMENT, message="event_id: must be a UUID"
        )
        status.details.add().Pack(info)
        status.details.add().Pack(bad)
        grpc_status = rpc_status.to_status(status)
        rpc.terminate(None, grpc_status.trailing_metadata, grpc_status.code, grpc_status.details)
        worker.join(timeout=5)
        assert len(raised) == 1
        err = raised[0]
        assert isinstance(err, RPCError)
        assert err.code is grpc.StatusCode.INVALID_ARGUMENT
        assert err.message == "event_id: must be a UUID"
        assert (err.reason, err.domain, err.metadata) == (
            "INVALID_UUID",
            "guestfeed.v1",
            {"field": "event_id"},
        )
        assert err.field_violations == {"event_id": "must be a UUID"}
        assert err.violation_reasons == {"event_id": "INVALID_UUID"}
        assert err.attempts == 1


class TestAsyncClientOnRealServer:
    async def test_iter_messages_yields_the_whole_feed(self, client: Client, world: World) -> None:
        """iter_messages(stream=True) streams every message of the feed in order (a
        service caller may name the read model)."""
        event = await world.event()
        user, _ = await world.member(event)
        for _ in range(7):
            await world.message(event, "announcement")
        gf = GuestFeedClient(client.channel, lambda: Client.token(user, Role.SERVICE_ROLE))
        got = [
            m.message_id
            async for m in gf.iter_messages(
                str(event), page_size=3, read_model=feed_pb2.READ_MODEL_V2, stream=True
            )
        ]
        assert got == [str(e.message_id) for e in feed(world, event, user, "v2")]
        assert len(got) == 7

    async def test_permission_denied_raises_rpc_error(self, client: Client, world: World) -> None:
        """A non-guest gets RPCError(PERMISSION_DENIED) from list_messages."""
        event = await world.event()
        outsider = await world.user()
        gf = GuestFeedClient(client.channel, Client.token(outsider))
        with pytest.raises(RPCError) as info:
            await gf.list_messages(str(event))
        assert info.value.code is grpc.StatusCode.PERMISSION_DENIED
        assert info.value.reason == "NOT_EVENT_GUEST"

    async def test_get_read_model_for_self(self, client: Client) -> None:
        """get_read_model answers for the caller's own (event, user)."""
        user = uuid.uuid4()
        gf = GuestFeedClient(client.channel, Client.token(user))
        resp = await gf.get_read_model(str(uuid.uuid4()), str(user))
        assert resp.read_model == feed_pb2.READ_MODEL_V1
        assert 0 <= resp.bucket < 100
