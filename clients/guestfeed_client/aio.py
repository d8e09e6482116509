"""An asyncio client for GuestFeedService and RolloutService."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc

from guestfeed.v1 import feed_pb2, feed_pb2_grpc, rollout_pb2, rollout_pb2_grpc

from .errors import RPCError

TokenSource = str | Callable[[], str]


def bearer_metadata(token: TokenSource) -> tuple[tuple[str, str], ...]:
    """Call metadata with the token (fetched afresh when it is a function)."""
    value = token() if callable(token) else token
    return (("authorization", f"Bearer {value}"),)


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
        return bearer_metadata(self._token)

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

    async def get_rollout_config(self) -> rollout_pb2.RolloutConfig:
        """The stored rollout configuration (service_role only)."""
        try:
            response = await self._rollout.GetRolloutConfig(
                rollout_pb2.GetRolloutConfigRequest(),
                metadata=self._metadata(),
                timeout=self._timeout,
            )
        except grpc.RpcError as err:
            raise RPCError.from_call(err) from None
        return response.config

    async def update_rollout_config(
        self, config: rollout_pb2.RolloutConfig, *, expected_revision: int, reason: str
    ) -> rollout_pb2.RolloutConfig:
        """Replaces the config if `expected_revision` is current (else ABORTED)."""
        request = rollout_pb2.UpdateRolloutConfigRequest(
            config=config, expected_revision=expected_revision, reason=reason
        )
        try:
            response = await self._rollout.UpdateRolloutConfig(
                request, metadata=self._metadata(), timeout=self._timeout
            )
        except grpc.RpcError as err:
            raise RPCError.from_call(err) from None
        return response.config

    async def list_rollout_changes(
        self, *, page_size: int = 0, page_token: str = ""
    ) -> rollout_pb2.ListRolloutChangesResponse:
        """One page of the rollout audit log, newest first."""
        request = rollout_pb2.ListRolloutChangesRequest(page_size=page_size, page_token=page_token)
        try:
            return await self._rollout.ListRolloutChanges(
                request, metadata=self._metadata(), timeout=self._timeout
            )
        except grpc.RpcError as err:
            raise RPCError.from_call(err) from None

    async def preview_rollout_change(
        self, config: rollout_pb2.RolloutConfig, *, max_events: int = 0
    ) -> rollout_pb2.PreviewRolloutChangeResponse:
        """Which guests and events a proposed config would move; changes nothing."""
        request = rollout_pb2.PreviewRolloutChangeRequest(config=config, max_events=max_events)
        try:
            return await self._rollout.PreviewRolloutChange(
                request, metadata=self._metadata(), timeout=self._timeout
            )
        except grpc.RpcError as err:
            raise RPCError.from_call(err) from None

    async def compare_read_models(
        self, event_id: str, *, user_id: str = "", timeout: float | None = None
    ) -> AsyncIterator[rollout_pb2.CompareReadModelsResponse]:
        """V1 against V2 per guest of an event, then a summary (service_role only).

        A long event takes a while: `timeout` bounds the whole stream (default:
        no deadline beyond the connection's).
        """
        request = rollout_pb2.CompareReadModelsRequest(event_id=event_id, user_id=user_id)
        call = self._rollout.CompareReadModels(request, metadata=self._metadata(), timeout=timeout)
        try:
            async for response in call:
                yield response
        except grpc.RpcError as err:
            raise RPCError.from_call(err) from None

    async def get_guard_status(self) -> rollout_pb2.GetGuardStatusResponse:
        """The answering replica's auto-rollback guard (service_role only)."""
        try:
            return await self._rollout.GetGuardStatus(
                rollout_pb2.GetGuardStatusRequest(),
                metadata=self._metadata(),
                timeout=self._timeout,
            )
        except grpc.RpcError as err:
            raise RPCError.from_call(err) from None
