"""An asyncio client for GuestFeedService and RolloutService."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
from guestfeed.v1 import feed_pb2, feed_pb2_grpc, rollout_pb2, rollout_pb2_grpc

from .errors import RPCError

TokenSource = str | Callable[[], str]


class GuestFeedClient:
    """Calls the service with a bearer token; failures raise `RPCError`.

    Args:
        channel: an open `grpc.aio.Channel` (the caller owns it).
        token: a JWT, or a function returning a fresh one for every call.
        timeout: the deadline of each unary call, in seconds.
    """

    def __init__(
        self, channel: grpc.aio.Channel, token: TokenSource, *, timeout: float = 10.0
    ) -> None:
        self._feed = feed_pb2_grpc.GuestFeedServiceStub(channel)
        self._rollout = rollout_pb2_grpc.RolloutServiceStub(channel)
        self._token = token
        self._timeout = timeout

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        token = self._token() if callable(self._token) else self._token
        return (("authorization", f"Bearer {token}"),)

    async def list_messages(
        self,
        event_id: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        read_model: feed_pb2.ReadModel = feed_pb2.READ_MODEL_UNSPECIFIED,
    ) -> feed_pb2.ListMessagesResponse:
        """One page of the caller's feed, newest first."""
        request = feed_pb2.ListMessagesRequest(
            event_id=event_id, page_size=page_size, page_token=page_token, read_model=read_model
        )
        try:
            return await self._feed.ListMessages(
                request, metadata=self._metadata(), timeout=self._timeout
            )
        except grpc.RpcError as err:
            raise RPCError.from_call(err) from None

    async def iter_messages(
        self,
        event_id: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        read_model: feed_pb2.ReadModel = feed_pb2.READ_MODEL_UNSPECIFIED,
        max_messages: int = 0,
    ) -> AsyncIterator[feed_pb2.GuestMessage]:
        """Every message of the feed (or the first `max_messages`), over one stream."""
        request = feed_pb2.StreamMessagesRequest(
            event_id=event_id,
            page_size=page_size,
            page_token=page_token,
            read_model=read_model,
            max_messages=max_messages,
        )
        call = self._feed.StreamMessages(request, metadata=self._metadata())
        try:
            async for page in call:
                for message in page.messages:
                    yield message
        except grpc.RpcError as err:
            raise RPCError.from_call(err) from None
        finally:
            call.cancel()

    async def get_read_model(self, event_id: str, user_id: str) -> rollout_pb2.GetReadModelResponse:
        """Which read model the rollout gives (event, user)."""
        request = rollout_pb2.GetReadModelRequest(event_id=event_id, user_id=user_id)
        try:
            return await self._rollout.GetReadModel(
                request, metadata=self._metadata(), timeout=self._timeout
            )
        except grpc.RpcError as err:
            raise RPCError.from_call(err) from None
