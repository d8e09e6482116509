"""A blocking client, for scripts and tools without an event loop."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from guestfeed.v1 import feed_pb2, feed_pb2_grpc

from .aio import TokenSource, bearer_metadata
from .errors import RPCError


class GuestFeedSyncClient:
    """The blocking twin of `GuestFeedClient` for the feed RPCs."""

    def __init__(self, channel: grpc.Channel, token: TokenSource, *, timeout: float = 10.0) -> None:
        self._feed = feed_pb2_grpc.GuestFeedServiceStub(channel)
        self._token = token
        self._timeout = timeout

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return bearer_metadata(self._token)

    def list_messages(
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
            response: feed_pb2.ListMessagesResponse = self._feed.ListMessages(
                request, metadata=self._metadata(), timeout=self._timeout
            )
        except grpc.RpcError as err:
            raise RPCError.from_call(err) from None
        return response

    def iter_pages(
        self,
        event_id: str,
        *,
        page_size: int = 0,
        read_model: feed_pb2.ReadModel = feed_pb2.READ_MODEL_UNSPECIFIED,
    ) -> Iterator[feed_pb2.ListMessagesResponse]:
        """Pages of the feed, following next_page_token to the end."""
        token = ""
        while True:
            page = self.list_messages(
                event_id, page_size=page_size, page_token=token, read_model=read_model
            )
            yield page
            token = page.next_page_token
            if not token:
                return
