"""The feed use case: who may read, which model serves, and page after page."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from .auth import Principal
from .consistency import ConsistencySampler
from .db import TrackedPool
from .errors import PermissionDenied
from .model import FeedPage, ReadModel
from .pagination import PageTokens, TokenScope
from .rollout import RolloutPolicy
from .storage import FeedStore

# The RPC's `context.time_remaining`: seconds left, None without a deadline.
Deadline = Callable[[], float | None] | None


@dataclass(frozen=True, slots=True)
class FeedQuery:
    """A validated feed request."""

    event_id: uuid.UUID
    page_size: int
    page_token: str
    # None: the caller left it to the token (when resuming) or the rollout.
    read_model: ReadModel | None
    # 0: no limit (StreamMessages only).
    max_messages: int = 0


class FeedReader:
    """Reads feeds through the store of the chosen read model."""

    def __init__(
        self,
        pool: TrackedPool,
        stores: Mapping[ReadModel, FeedStore],
        rollout: RolloutPolicy,
        tokens: PageTokens,
        *,
        query_timeout_s: float,
        sampler: ConsistencySampler | None = None,
    ) -> None:
        self._pool = pool
        self._sampler = sampler
        self._stores = stores
        self._rollout = rollout
        self._tokens = tokens
        self._query_timeout = query_timeout_s

    def choose_model(self, who: Principal, query: FeedQuery) -> tuple[ReadModel, str]:
        """Explicit choice first, then the token's (a paging session keeps its
        model even if the rollout moves meanwhile), then the rollout.

        Returns the model and why: "explicit", "page_token" or the rollout's reason.
        """
        if query.read_model is not None:
            return query.read_model, "explicit"
        if query.page_token:
            return self._tokens.peek_read_model(query.page_token), "page_token"
        decision = self._rollout.decide(query.event_id, who.reader())
        return decision.read_model, decision.reason.value

    async def page(
        self, who: Principal, query: FeedQuery, *, time_remaining: Deadline = None
    ) -> tuple[FeedPage, str]:
        """Returns one page and its next page token ('' at the end of history)."""
        reader = who.reader()
        model, choice = self.choose_model(who, query)
        scope = TokenScope(query.event_id, reader, model)
        cursor = self._tokens.decode(query.page_token, scope) if query.page_token else None
        timeout = self._timeout(time_remaining)
        store = self._stores[model]
        async with self._pool.acquire(timeout=timeout) as conn:
            # One statement checks access and reads the page. One row more
            # than asked tells whether another page exists, so the last page
            # carries no token and no empty page is ever served.
            viewer, rows = await store.fetch(
                conn, query.event_id, reader, cursor, query.page_size + 1, timeout=timeout
            )
        if viewer is None:
            raise PermissionDenied(
                "you are not an active guest of this event",
                "NOT_EVENT_GUEST",
                {"event_id": str(query.event_id)},
            )
        if cursor is None and self._sampler is not None:
            self._sampler.maybe_check(viewer)
        messages = rows[: query.page_size]
        more = len(rows) > query.page_size
        next_cursor = messages[-1].cursor if more and messages else None
        page = FeedPage(
            messages=messages, next_cursor=next_cursor, read_model=model, model_choice=choice
        )
        token = self._tokens.encode(scope, next_cursor) if next_cursor else ""
        return page, token

    async def stream(
        self, who: Principal, query: FeedQuery, *, time_remaining: Deadline = None
    ) -> AsyncIterator[tuple[FeedPage, str]]:
        """Yields successive pages until history or `max_messages` runs out.

        Every page re-checks access, so a guest removed mid-stream is stopped
        with PERMISSION_DENIED within a page or two. The next page is read
        while the current one is being sent: the database round trip and the
        network write overlap instead of taking turns.
        """
        remaining = query.max_messages or None
        who.reader()  # a service key without a user fails before the stream starts
        model, choice = self.choose_model(who, query)

        def fetch(token: str) -> asyncio.Task[tuple[FeedPage, str]]:
            size = query.page_size if remaining is None else min(query.page_size, remaining)
            step = FeedQuery(query.event_id, size, token, model)
            return asyncio.create_task(self.page(who, step, time_remaining=time_remaining))

        pending: asyncio.Task[tuple[FeedPage, str]] | None = fetch(query.page_token)
        try:
            while pending is not None:
                page, token = await pending
                pending = None
                # Later pages resume from a token; the stream's model was chosen once.
                page = dataclasses.replace(page, model_choice=choice)
                if remaining is not None:
                    remaining -= len(page.messages)
                if token and (remaining is None or remaining > 0):
                    pending = fetch(token)
                yield page, token
        finally:
            # The client went away or a page failed: stop the read ahead.
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending

    def _timeout(self, time_remaining: Deadline) -> float:
        # Database work never outlives the caller's deadline.
        left = time_remaining() if time_remaining is not None else None
        if left is None:
            return self._query_timeout
        return max(0.001, min(self._query_timeout, left))
