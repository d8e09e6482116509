"""Small helpers shared by test modules."""

from __future__ import annotations

import uuid

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from guestfeed.v1 import feed_pb2

from .conftest import Client
from .factory import World

MODELS = {"v1": feed_pb2.READ_MODEL_V1, "v2": feed_pb2.READ_MODEL_V2}


async def read_all(
    client: Client, event_id: uuid.UUID, user_id: uuid.UUID, model: str, page_size: int = 50
) -> list[feed_pb2.GuestMessage]:
    """Every message of the feed, following next_page_token to the end."""
    out: list[feed_pb2.GuestMessage] = []
    token = ""
    for _ in range(10_000):
        resp = await client.feed.ListMessages(
            feed_pb2.ListMessagesRequest(
                event_id=str(event_id),
                page_size=page_size,
                page_token=token,
                read_model=MODELS[model],
            ),
            metadata=client.pinning(user_id),
        )
        out.extend(resp.messages)
        token = resp.next_page_token
        if not token:
            return out
    raise AssertionError("pagination did not end")


def rich_status(err: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    """The google.rpc.Status in an error's trailing metadata, if any."""
    return rpc_status.from_call(err)  # type: ignore[arg-type]


def field_violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    """field -> description from the BadRequest detail of an error."""
    status = rich_status(err)
    assert status is not None, "INVALID_ARGUMENT must carry google.rpc.Status details"
    out: dict[str, str] = {}
    for any_ in status.details:
        if any_.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_.Unpack(bad)
            out.update({v.field: v.description for v in bad.field_violations})
    return out


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo detail of an error, if any."""
    status = rich_status(err)
    if status is None:
        return None
    for any_ in status.details:
        if any_.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_.Unpack(info)
            return info
    return None


async def guest_with_feed(world: World) -> tuple[uuid.UUID, uuid.UUID]:
    """An event whose v1 and v2 feeds differ (an undelivered announcement is v2-only)."""
    event = await world.event()
    user, guest = await world.member(event)
    for _ in range(3):
        mid = await world.message(event, "announcement")
        await world.deliver(mid, guest_id=guest, user_id=user)
    await world.message(event, "announcement")
    return event, user
