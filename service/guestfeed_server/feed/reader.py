"""The feed use case: who may read, which model serves, and page after page.

A page request reads straight down and back up: the query arrives validated;
its token is opened once; the read model is chosen once (and recorded);
one store call checks access and reads the page; the page goes back with
the token that resumes after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from ..auth import Principal
from ..domain.budget import Budget
from ..domain.errors import DeadlineExceeded, GuestFeedError, PermissionDenied, Unavailable
from ..domain.model import Cursor, FeedMessage, ReadModel
from ..domain.signals import PageOutcome
from ..rollout import RolloutPolicy
from ..storage import FeedStore
from ..telemetry import record
from .choice import ModelChoice, choose
from .query import FeedQuery
from .shadow import ShadowReads
from .tokens import PageTokens, TokenScope

# The RPC's `context.time_remaining`: seconds left, None without a deadline.
Remaining = Callable[[], float | None] | None


@dataclass(frozen=True, slots=True)
class FeedPage:
    """One page, the token that resumes after it ('' at the start of history),
    and how its read model was chosen."""

    messages: list[FeedMessage]
    next_page_token: str
    choice: ModelChoice

    @property
    def read_model(self) -> ReadModel:
        """The read model that served the page."""
        return self.choice.read_model


class FeedReader:
    """Reads feeds through the store of the chosen read model."""

    def __init__(
        self,
        stores: Mapping[ReadModel, FeedStore],
        rollout: RolloutPolicy,
        tokens: PageTokens,
        *,
        query_timeout_s: float,
        shadow: ShadowReads | None = None,
        observe: Callable[[PageOutcome], None] | None = None,
    ) -> None:
        self._stores = stores
        self._rollout = rollout
        self._tokens = tokens
        self._query_timeout = query_timeout_s
        self._shadow = shadow
        # Told of every page read that ended well or failed on our side (the guard).
        self._observe = observe

    def _start(
        self, who: Principal, query: FeedQuery
    ) -> tuple[uuid.UUID, ModelChoice, Cursor | None]:
        """The reader, the model and the starting cursor, the token opened once."""
        user = who.reader()
        token = self._tokens.open(query.page_token) if query.page_token else None
        choice = choose(
            query.read_model, token, self._rollout, query.event_id, user, may_pin=who.is_service
        )
        scope = TokenScope(query.event_id, user, choice.read_model)
        cursor = None
        if token is not None:
            cursor = token.cursor_for(scope, any_model=choice.carries(token))
        if choice.decision is not None:
            record.note_decision(choice.read_model.value, choice.label)
        if choice.requested is not None:
            record.note_requested(choice.requested.value)
        return user, choice, cursor

    async def page(
        self, who: Principal, query: FeedQuery, *, time_remaining: Remaining = None
    ) -> FeedPage:
        """One page of the caller's feed."""
        user, choice, cursor = self._start(who, query)
        return await self._read(user, query, choice, cursor, query.page_size, time_remaining)

    async def stream(
        self, who: Principal, query: FeedQuery, *, time_remaining: Remaining = None
    ) -> AsyncIterator[FeedPage]:
        """Yields successive pages until history or `max_messages` runs out.

        Every page re-checks access, so a guest removed mid-stream is stopped
        with PERMISSION_DENIED within a page or two. The next page is read
        while the current one is being sent: the database round trip and the
        network write overlap instead of taking turns.
        """
        user, choice, cursor = self._start(who, query)
        remaining = query.max_messages or None

        def fetch(at: Cursor | None) -> asyncio.Task[FeedPage]:
            size = query.page_size if remaining is None else min(query.page_size, remaining)
            return asyncio.create_task(self._read(user, query, choice, at, size, time_remaining))

        pending: asyncio.Task[FeedPage] | None = fetch(cursor)
        try:
            while pending is not None:
                page = await pending
                pending = None
                if remaining is not None:
                    remaining -= len(page.messages)
                if page.next_page_token and (remaining is None or remaining > 0):
                    pending = fetch(page.messages[-1].cursor)
                yield page
        finally:
            # The client went away or a page failed: stop the read ahead.
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending

    async def _read(
        self,
        user: uuid.UUID,
        query: FeedQuery,
        choice: ModelChoice,
        cursor: Cursor | None,
        size: int,
        time_remaining: Remaining,
    ) -> FeedPage:
        budget = Budget.of(self._query_timeout, time_remaining() if time_remaining else None)
        started = time.perf_counter()
        try:
            # One row more than asked tells whether another page exists, so the
            # last page carries no token and no empty page is ever served.
            read = await self._stores[choice.read_model].read(
                query.event_id, user, cursor, size + 1, budget
            )
        except Exception as exc:
            if _server_side(exc):
                self._outcome(query.event_id, choice.read_model, started, failed=True)
            raise
        self._outcome(query.event_id, choice.read_model, started, failed=False)
        if read.viewer is None:
            raise PermissionDenied(
                "you are not an active guest of this event",
                "NOT_EVENT_GUEST",
                {"event_id": str(query.event_id)},
            )
        if cursor is None and choice.read_model is ReadModel.V1 and self._shadow is not None:
            self._shadow.maybe_read(read.viewer, read.messages, size + 1)
        messages = read.messages[:size]
        token = ""
        if len(read.messages) > size and messages:
            scope = TokenScope(query.event_id, user, choice.read_model)
            token = self._tokens.encode(scope, messages[-1].cursor)
        record.note_page(
            messages,
            read_model=choice.read_model.value,
            model_choice=choice.label,
            event_id=str(query.event_id),
            page_size=query.page_size,
        )
        return FeedPage(messages, token, choice)

    def _outcome(
        self, event_id: uuid.UUID, model: ReadModel, started: float, *, failed: bool
    ) -> None:
        if self._observe is not None:
            latency_ms = (time.perf_counter() - started) * 1000
            self._observe(PageOutcome(event_id, model, latency_ms, failed))


def _server_side(exc: Exception) -> bool:
    """A failure that says the read model is unwell (not a caller's mistake)."""
    return isinstance(exc, Unavailable | DeadlineExceeded) or not isinstance(exc, GuestFeedError)
