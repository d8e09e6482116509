"""GuestFeedService: a guest's feed, one page or a stream of pages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from guestfeed.v1 import feed_pb2, feed_pb2_grpc

from ..auth import Authenticator
from ..feed import FeedQuery, FeedReader
from ..model import FeedPage
from ..telemetry import record
from . import convert


class GuestFeedServicer(feed_pb2_grpc.GuestFeedServiceServicer):
    """Each RPC: authenticate, validate, read, map. Errors map in grpc_errors."""

    def __init__(self, auth: Authenticator, reader: FeedReader) -> None:
        self._auth = auth
        self._reader = reader

    async def ListMessages(  # noqa: N802 (gRPC method name)
        self, request: feed_pb2.ListMessagesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> feed_pb2.ListMessagesResponse:
        """One page of the caller's feed."""
        who = convert.principal(self._auth, context)
        query = convert.feed_query(
            event_id=request.event_id,
            page_size=request.page_size,
            page_token=request.page_token,
            read_model=request.read_model,
        )
        page, token = await self._reader.page(who, query, time_remaining=context.time_remaining)
        _observe(page, query, first=True)
        response = feed_pb2.ListMessagesResponse(
            next_page_token=token, read_model=convert.read_model_pb(page.read_model)
        )
        convert.add_messages(response.messages, page.messages)
        return response

    async def StreamMessages(  # noqa: N802 (gRPC method name)
        self, request: feed_pb2.StreamMessagesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[feed_pb2.StreamMessagesResponse]:
        """Successive pages until history or `max_messages` runs out."""
        who = convert.principal(self._auth, context)
        query = convert.feed_query(
            event_id=request.event_id,
            page_size=request.page_size,
            page_token=request.page_token,
            read_model=request.read_model,
            max_messages=request.max_messages,
        )
        first = True
        async for page, token in self._reader.stream(
            who, query, time_remaining=context.time_remaining
        ):
            _observe(page, query, first=first)
            first = False
            response = feed_pb2.StreamMessagesResponse(
                next_page_token=token, read_model=convert.read_model_pb(page.read_model)
            )
            convert.add_messages(response.messages, page.messages)
            yield response


def _observe(page: FeedPage, query: FeedQuery, *, first: bool) -> None:
    """Feeds the RPC's span, log line and metrics (see telemetry.record)."""
    record.note_page(
        page,
        event_id=str(query.event_id),
        page_size=query.page_size,
        model_choice=page.model_choice,
    )
    if first and page.model_choice not in ("explicit", "page_token"):
        record.note_decision(page.read_model.value, page.model_choice)
