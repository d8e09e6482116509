"""An asyncio client for GuestFeedService and RolloutService."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from guestfeed.v1 import feed_pb2, feed_pb2_grpc, rollout_pb2, rollout_pb2_grpc

from .errors import RPCError
from .policy import (
    DEFAULT_RETRY,
    NO_RETRY,
    AsyncTokenSource,
    Attempts,
    Metadata,
    Resume,
    RetryPolicy,
    TokenSource,
    bearer,
    bearer_metadata,
    page_timeout,
)

# Re-exported: callers imported these from here before policy.py existed.
__all__ = ["AsyncTokenSource", "GuestFeedClient", "TokenSource", "bearer_metadata"]

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class GuestFeedClient:
    """Calls the service with a bearer token; failures raise `RPCError`.

    Reads are retried on UNAVAILABLE as `retry` says, within the call's
    deadline; `update_rollout_config` never is (see there).

    Args:
        channel: an open `grpc.aio.Channel` (the caller owns it).
        token: a JWT, or a function (plain or async) returning the current one;
            it is called for every attempt, so rotated tokens are picked up.
        timeout: the default deadline of a unary call in seconds, its retries
            included; None for none. Every method's `timeout` overrides it.
        retry: how reads are retried; `NO_RETRY` turns retries off.
        sleep, rng, clock: the backoff's pause, its jitter in [0, 1) and the
            clock deadlines are measured on; tests replace them.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        token: AsyncTokenSource,
        *,
        timeout: float | None = 10.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._feed = feed_pb2_grpc.GuestFeedServiceStub(channel)
        self._rollout = rollout_pb2_grpc.RolloutServiceStub(channel)
        self._token = token
        self._timeout = timeout
        self._retry = retry
        self._sleep = sleep
        self._rng = rng
        self._clock = clock

    async def _metadata(self) -> Metadata:
        if isinstance(self._token, str):
            return bearer(self._token)
        value = self._token()
        return bearer(value if isinstance(value, str) else await value)

    def _attempts(self, policy: RetryPolicy, timeout: float | None) -> Attempts:
        return Attempts(policy, timeout, clock=self._clock, rng=self._rng)

    async def _unary(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
        timeout: float | None,
        *,
        idempotent: bool = True,
    ) -> _Resp:
        attempts = self._attempts(
            self._retry if idempotent else NO_RETRY,
            self._timeout if timeout is None else timeout,
        )
        while True:
            attempt_timeout = attempts.start()
            try:
                return await method(
                    request, metadata=await self._metadata(), timeout=attempt_timeout
                )
            except grpc.RpcError as exc:
                err = RPCError.from_call(exc)
            pause = attempts.pause_after(err)
            if pause is None:
                raise err
            await self._sleep(pause)

    async def list_messages(
        self,
        event_id: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        read_model: feed_pb2.ReadModel = feed_pb2.READ_MODEL_UNSPECIFIED,
        timeout: float | None = None,
    ) -> feed_pb2.ListMessagesResponse:
        """One page of the caller's feed, newest first."""
        request = feed_pb2.ListMessagesRequest(
            event_id=event_id, page_size=page_size, page_token=page_token, read_model=read_model
        )
        return await self._unary(self._feed.ListMessages, request, timeout)

    async def iter_messages(
        self,
        event_id: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        read_model: feed_pb2.ReadModel = feed_pb2.READ_MODEL_UNSPECIFIED,
        max_messages: int = 0,
        stream: bool = False,
        timeout: float | None = None,
    ) -> AsyncGenerator[feed_pb2.GuestMessage]:
        """Every message of the feed after `page_token` (or the first `max_messages`).

        By default page by page with ListMessages, each page a unary call
        with the client's deadline and retries; with `stream=True` over
        StreamMessages, reopened after UNAVAILABLE. Either way a retry resumes
        from the token of the last page received, so no message is repeated
        or skipped. `timeout` bounds the whole iteration (default: no bound,
        since the reader sets the pace). A reader that stops early should
        `aclose()` it (or use `contextlib.aclosing`) to end the stream at once.
        """
        resume = Resume(page_token, max_messages)
        if stream:
            pages = self._stream_pages(event_id, page_size, read_model, resume, timeout)
        else:
            pages = self._list_pages(event_id, page_size, read_model, resume, timeout)
        # aclosing: a reader that stops early cancels the stream now, not at GC.
        async with contextlib.aclosing(pages):
            async for page in pages:
                for message in page:
                    yield message

    async def _list_pages(
        self,
        event_id: str,
        page_size: int,
        read_model: feed_pb2.ReadModel,
        resume: Resume,
        timeout: float | None,
    ) -> AsyncGenerator[list[feed_pb2.GuestMessage]]:
        deadline = None if timeout is None else self._clock() + timeout
        while not resume.finished:
            page = await self.list_messages(
                event_id,
                page_size=page_size,
                page_token=resume.page_token,
                read_model=read_model,
                timeout=page_timeout(self._timeout, deadline, self._clock()),
            )
            yield list(page.messages[: resume.took(page.next_page_token, len(page.messages))])

    async def _stream_pages(
        self,
        event_id: str,
        page_size: int,
        read_model: feed_pb2.ReadModel,
        resume: Resume,
        timeout: float | None,
    ) -> AsyncGenerator[list[feed_pb2.GuestMessage]]:
        attempts = self._attempts(self._retry, timeout)
        while not resume.finished:
            request = resume.stream_request(event_id, page_size, read_model)
            call = self._feed.StreamMessages(
                request, metadata=await self._metadata(), timeout=attempts.start()
            )
            try:
                async for page in call:
                    attempts.progress()
                    yield list(
                        page.messages[: resume.took(page.next_page_token, len(page.messages))]
                    )
                return
            except grpc.RpcError as exc:
                err = RPCError.from_call(exc)
            finally:
                # Frees the server's stream slot when the reader stops early.
                call.cancel()
            pause = attempts.pause_after(err)
            if pause is None:
                raise err
            await self._sleep(pause)

    async def get_read_model(
        self, event_id: str, user_id: str, *, timeout: float | None = None
    ) -> rollout_pb2.GetReadModelResponse:
        """Which read model the rollout gives (event, user)."""
        request = rollout_pb2.GetReadModelRequest(event_id=event_id, user_id=user_id)
        return await self._unary(self._rollout.GetReadModel, request, timeout)

    async def get_rollout_config(
        self, *, timeout: float | None = None
    ) -> rollout_pb2.RolloutConfig:
        """The stored rollout configuration (service_role only)."""
        request = rollout_pb2.GetRolloutConfigRequest()
        response = await self._unary(self._rollout.GetRolloutConfig, request, timeout)
        return response.config

    async def update_rollout_config(
        self,
        config: rollout_pb2.RolloutConfig,
        *,
        expected_revision: int,
        reason: str,
        timeout: float | None = None,
    ) -> rollout_pb2.RolloutConfig:
        """Replaces the config if `expected_revision` is current (else ABORTED).

        Never retried: after UNAVAILABLE or DEADLINE_EXCEEDED the change may or
        may not have been applied, and a blind retry would then fail ABORTED
        (or apply a change decided on a stale read). Re-read the config and
        decide again.
        """
        request = rollout_pb2.UpdateRolloutConfigRequest(
            config=config, expected_revision=expected_revision, reason=reason
        )
        response = await self._unary(
            self._rollout.UpdateRolloutConfig, request, timeout, idempotent=False
        )
        return response.config

    async def list_rollout_changes(
        self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> rollout_pb2.ListRolloutChangesResponse:
        """One page of the rollout audit log, newest first."""
        request = rollout_pb2.ListRolloutChangesRequest(page_size=page_size, page_token=page_token)
        return await self._unary(self._rollout.ListRolloutChanges, request, timeout)

    async def preview_rollout_change(
        self,
        config: rollout_pb2.RolloutConfig,
        *,
        max_events: int = 0,
        timeout: float | None = None,
    ) -> rollout_pb2.PreviewRolloutChangeResponse:
        """Which guests and events a proposed config would move; changes nothing."""
        request = rollout_pb2.PreviewRolloutChangeRequest(config=config, max_events=max_events)
        return await self._unary(self._rollout.PreviewRolloutChange, request, timeout)

    async def compare_read_models(
        self, event_id: str, *, user_id: str = "", timeout: float | None = None
    ) -> AsyncIterator[rollout_pb2.CompareReadModelsResponse]:
        """V1 against V2 per guest of an event, then a summary (service_role only).

        A long event takes a while: `timeout` bounds the whole stream (default:
        no deadline beyond the connection's). Not retried: the report has no
        resume token, and a restart would repeat the guests already sent.
        """
        request = rollout_pb2.CompareReadModelsRequest(event_id=event_id, user_id=user_id)
        call = self._rollout.CompareReadModels(
            request, metadata=await self._metadata(), timeout=timeout
        )
        try:
            async for response in call:
                yield response
        except grpc.RpcError as err:
            raise RPCError.from_call(err) from None
        finally:
            call.cancel()

    async def get_guard_status(
        self, *, timeout: float | None = None
    ) -> rollout_pb2.GetGuardStatusResponse:
        """The answering replica's auto-rollback guard (service_role only)."""
        request = rollout_pb2.GetGuardStatusRequest()
        return await self._unary(self._rollout.GetGuardStatus, request, timeout)
