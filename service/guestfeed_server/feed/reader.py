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
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from ..auth import Principal
from ..domain.budget import Budget, Lane
from ..domain.errors import DeadlineExceeded, GuestFeedError, PermissionDenied, Unavailable
from ..domain.model import Cursor, FeedMessage, ReadModel
from ..domain.signals import PageOutcome
from ..rollout import RolloutPolicy
from ..storage import FeedStore
from ..storage.horizon import Horizon, HorizonSpec
from ..telemetry import record
from .choice import ModelChoice, choose
from .limits import StreamLimits, admitted
from .query import FeedQuery
from .shadow import ShadowReads
from .tokens import PageTokens, TokenScope
from .watch_tokens import WatchTokens

# The RPC's `context.time_remaining`: seconds left, None without a deadline.
Remaining = Callable[[], float | None] | None

# The fewest rows a stream reads from the database at once (docs/performance.md).
STREAM_BATCH = 100

# What one read brings back: the messages, whether more exist, and the horizon
# read before them (first pages only).
Fetched = tuple[list[FeedMessage], bool, Horizon | None]


@dataclass(frozen=True, slots=True)
class FeedPage:
    """One page, the token that resumes after it ('' at the start of history),
    and how its read model was chosen."""

    messages: list[FeedMessage]
    next_page_token: str
    choice: ModelChoice
    # First pages only: where WatchMessages continues from (see `WatchMarks`).
    watch_token: str = ""

    @property
    def read_model(self) -> ReadModel:
        """The read model that served the page."""
        return self.choice.read_model


class WatchPositions(Protocol):
    """The live-update hub as a first page sees it (`watch_hub.WatchHub`)."""

    spec: HorizonSpec

    def fresh(self) -> datetime | None:
        """A recent horizon, if the hub has one (no query)."""
        ...

    def note(self, h: Horizon) -> datetime:
        """Hands the hub a horizon read with a page; returns the one to use."""
        ...


@dataclass(frozen=True, slots=True)
class WatchMarks:
    """What a first page needs to carry a `watch_token`."""

    positions: WatchPositions
    tokens: WatchTokens


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
        limits: StreamLimits | None = None,
        watch: WatchMarks | None = None,
    ) -> None:
        self._stores = stores
        self._rollout = rollout
        self._tokens = tokens
        self._query_timeout = query_timeout_s
        self._shadow = shadow
        # Told of every page read that ended well or failed on our side (the guard).
        self._observe = observe
        self._limits = limits
        self._watch = watch

    def _mark(self, cursor: Cursor | None) -> tuple[datetime | None, HorizonSpec | None]:
        """For a first page: a horizon from before the page's read, so every message
        keyed below it is in the page's snapshot, and a watch from it misses
        nothing (it may repeat what the page holds). The hub's, when it has a
        recent one; else the spec to read one with the page, on its connection."""
        if cursor is not None or self._watch is None:
            return None, None
        fresh = self._watch.positions.fresh()
        return fresh, (self._watch.positions.spec if fresh is None else None)

    def _watch_token(
        self,
        page: FeedPage,
        query: FeedQuery,
        user: uuid.UUID,
        mark: datetime | None,
        read: Horizon | None,
    ) -> FeedPage:
        if self._watch is None:
            return page
        if read is not None:
            mark = self._watch.positions.note(read)
        if mark is None:
            return page
        scope = TokenScope(query.event_id, user, page.read_model)
        return replace(page, watch_token=self._watch.tokens.encode(scope, mark))

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
        mark, spec = self._mark(cursor)
        messages, more, read = await self._fetch(
            user, query, choice, cursor, query.page_size, time_remaining, Lane.REQUEST, spec
        )
        page = self._page(user, query, choice, messages, more=more)
        return self._watch_token(page, query, user, mark, read)

    async def stream(
        self, who: Principal, query: FeedQuery, *, time_remaining: Remaining = None
    ) -> AsyncIterator[FeedPage]:
        """Yields successive pages until history or `max_messages` runs out.

        The database is read in batches of at least `STREAM_BATCH` rows,
        whatever the page size, and each batch is cut into `page_size`
        responses in memory: a client asking for one message per response,
        and then reading nothing while its gRPC library keeps accepting,
        costs one query per batch, not one per message. The next batch is
        read while the current one is sent, through the pool's bulk lane
        (short calls keep the rest of the pool). Every batch re-checks
        access, so a guest removed mid-stream is stopped within a batch or
        two. The caller may hold only so many streams (`StreamLimits`).
        """
        with admitted(self._limits, who.actor, query.event_id):
            async for page in self._stream(who, query, time_remaining):
                yield page

    async def _stream(
        self, who: Principal, query: FeedQuery, time_remaining: Remaining
    ) -> AsyncIterator[FeedPage]:
        user, choice, cursor = self._start(who, query)
        mark, spec = self._mark(cursor)
        size = query.page_size
        # Messages not yet read from the database (None: no max_messages).
        unread = query.max_messages or None

        def fetch(at: Cursor | None, spec: HorizonSpec | None = None) -> asyncio.Task[Fetched]:
            rows = max(size, STREAM_BATCH)
            if unread is not None:
                rows = min(rows, unread)
            return asyncio.create_task(
                self._fetch(user, query, choice, at, rows, time_remaining, Lane.BULK, spec)
            )

        pending: asyncio.Task[Fetched] | None = fetch(cursor, spec)
        read: Horizon | None = None
        try:
            while pending is not None:
                messages, more, first_read = await pending
                read = read or first_read
                pending = None
                if unread is not None:
                    unread -= len(messages)
                if more and messages and (unread is None or unread > 0):
                    pending = fetch(messages[-1].cursor)
                if not messages:
                    yield self._watch_token(
                        self._page(user, query, choice, [], more=False), query, user, mark, read
                    )
                    return
                for i in range(0, len(messages), size):
                    chunk = messages[i : i + size]
                    after = i + size < len(messages) or more
                    page = self._page(user, query, choice, chunk, more=after)
                    # The first response only: both are None after it.
                    yield self._watch_token(page, query, user, mark, read)
                    mark = read = None
        finally:
            # The client went away or a batch failed: stop the read ahead.
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending

    def _page(
        self,
        user: uuid.UUID,
        query: FeedQuery,
        choice: ModelChoice,
        messages: list[FeedMessage],
        *,
        more: bool,
    ) -> FeedPage:
        """A response: the messages, and the token after them while more exist."""
        token = ""
        if more and messages:
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

    async def _fetch(
        self,
        user: uuid.UUID,
        query: FeedQuery,
        choice: ModelChoice,
        cursor: Cursor | None,
        rows: int,
        time_remaining: Remaining,
        lane: Lane,
        horizon: HorizonSpec | None = None,
    ) -> Fetched:
        """Up to `rows` messages after `cursor`, whether more exist, and the horizon
        read first when `horizon` asks for one."""
        remaining = time_remaining() if time_remaining else None
        budget = Budget.of(self._query_timeout, remaining, lane)
        started = time.perf_counter()
        try:
            # One row more than asked tells whether another page exists, so the
            # last page carries no token and no empty page is ever served.
            read = await self._stores[choice.read_model].read(
                query.event_id, user, cursor, rows + 1, budget, horizon=horizon
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
            self._shadow.maybe_read(read.viewer, read.messages, rows + 1)
        return read.messages[:rows], len(read.messages) > rows, read.horizon

    def _outcome(
        self, event_id: uuid.UUID, model: ReadModel, started: float, *, failed: bool
    ) -> None:
        if self._observe is not None:
            latency_ms = (time.perf_counter() - started) * 1000
            self._observe(PageOutcome(event_id, model, latency_ms, failed))


def _server_side(exc: Exception) -> bool:
    """A failure that says the read model is unwell (not a caller's mistake)."""
    return isinstance(exc, Unavailable | DeadlineExceeded) or not isinstance(exc, GuestFeedError)
