"""What the visibility suite shares: reading a whole feed both ways and checking it
against the oracle, which is itself checked against an expectation written by hand."""

from __future__ import annotations

import uuid

import grpc
import pytest

from guestfeed.v1 import feed_pb2

from ..conftest import Client
from ..factory import World
from ..helpers import MODELS, error_info, read_all
from ..oracle import Expected, feed

TYPE_NAMES = {
    feed_pb2.MESSAGE_TYPE_DIRECT: "direct",
    feed_pb2.MESSAGE_TYPE_ANNOUNCEMENT: "announcement",
    feed_pb2.MESSAGE_TYPE_CHANNEL: "channel",
}


both_models = pytest.mark.parametrize("model", ["v1", "v2"])


def as_expected(m: feed_pb2.GuestMessage) -> Expected:
    """The oracle's view of a served message."""
    return Expected(
        message_id=uuid.UUID(m.message_id),
        type=TYPE_NAMES[m.message_type],
        is_own=m.is_own_message,
        is_delivery_backed=m.is_delivery_backed,
        delivery_status=m.delivery_status,
        sender_name=m.sender_name,
    )


async def check(
    client: Client,
    world: World,
    event: uuid.UUID,
    user: uuid.UUID,
    model: str,
    expected: list[uuid.UUID],
) -> dict[uuid.UUID, feed_pb2.GuestMessage]:
    """Asserts server == oracle (all fields) and oracle == `expected` (ids, newest first)."""
    got = await read_all(client, event, user, model)
    oracle = feed(world, event, user, model)
    assert [as_expected(m) for m in got] == oracle
    assert [e.message_id for e in oracle] == expected
    assert len({m.message_id for m in got}) == len(got)
    return {uuid.UUID(m.message_id): m for m in got}


async def stream_all(
    client: Client, event: uuid.UUID, user: uuid.UUID, model: str, page_size: int = 2
) -> list[feed_pb2.GuestMessage]:
    """The whole feed through StreamMessages."""
    call = client.feed.StreamMessages(
        feed_pb2.StreamMessagesRequest(
            event_id=str(event), page_size=page_size, read_model=MODELS[model]
        ),
        metadata=client.auth(user),
    )
    return [m async for resp in call for m in resp.messages]


async def assert_denied(client: Client, event: uuid.UUID, user: uuid.UUID, model: str) -> None:
    """Both feed RPCs answer PERMISSION_DENIED with an ErrorInfo."""
    with pytest.raises(grpc.aio.AioRpcError) as listed:
        await read_all(client, event, user, model)
    assert listed.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = error_info(listed.value)
    assert info is not None and info.reason
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        await stream_all(client, event, user, model)
    assert streamed.value.code() == grpc.StatusCode.PERMISSION_DENIED
