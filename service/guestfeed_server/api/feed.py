"""GuestFeedService: a guest's feed, one page, a stream of pages, or live updates."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from guestfeed.v1 import feed_pb2, feed_pb2_grpc

from ..auth import Authenticator
from ..domain.errors import Unavailable
from ..feed import FeedReader
from ..feed.watch import FeedWatcher
from . import convert


class GuestFeedServicer(feed_pb2_grpc.GuestFeedServiceServicer):
    """Each RPC: authenticate, validate, read, map. Errors map in api/errors.py."""

    def __init__(
        self, auth: Authenticator, reader: FeedReader, watcher: FeedWatcher | None = None
    ) -> None:
        self._auth = auth
        self._reader = reader
        self._watcher = watcher

    async def ListMessages(  # noqa: N802 (gRPC method name)
        self, request: feed_pb2.ListMessagesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> feed_pb2.ListMessagesResponse:
        """One page of the caller's feed."""
        who = convert.principal(self._auth, context)
        query = convert.list_query(request)
        page = await self._reader.page(who, query, time_remaining=context.time_remaining)
        return convert.list_response(page)

    async def StreamMessages(  # noqa: N802 (gRPC method name)
        self, request: feed_pb2.StreamMessagesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[feed_pb2.StreamMessagesResponse]:
        """Successive pages until history or `max_messages` runs out."""
        who = convert.principal(self._auth, context)
        query = convert.stream_query(request)
        async for page in self._reader.stream(who, query, time_remaining=context.time_remaining):
            yield convert.stream_response(page)

    async def WatchMessages(  # noqa: N802 (gRPC method name)
        self, request: feed_pb2.WatchMessagesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[feed_pb2.WatchMessagesResponse]:
        """The messages that become visible, from a position on, until the caller leaves."""
        who = convert.principal(self._auth, context)
        query = convert.watch_query(request)
        if self._watcher is None:
            raise Unavailable("live updates are not served by this replica", "WATCH_DISABLED")
        async for update in self._watcher.watch(who, query, time_remaining=context.time_remaining):
            yield convert.watch_response(update)
