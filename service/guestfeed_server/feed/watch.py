"""WatchMessages, the use case: a guest's feed as it changes, from a position on.

A watch registers with the replica's hub (`watch_hub.WatchHub`), then runs
one catch-up query for its own feed from its start position to the hub's
(an empty window for a watch "from now": the query still checks access and
reads the guest rows). From then on the hub's ticks queue what becomes
visible to it; the watch sends that, a heartbeat when nothing came for a
while, and a token with every response. Registering before the catch-up
leaves no gap between the two: the hub queues from the catch-up's end while
it runs.
"""

from __future__ import annotations

import collections
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from ..auth import Principal
from ..domain.budget import Budget, Lane
from ..domain.errors import FailedPrecondition, PermissionDenied
from ..domain.model import FeedMessage, ReadModel
from ..rollout import RolloutPolicy
from ..settings import WatchSettings
from ..storage.watch import WatchStore
from ..telemetry import record
from .choice import choose
from .limits import StreamLimits, admitted
from .reader import Remaining
from .tokens import TokenScope
from .watch_fanout import Keyed, caught_up, responses, select
from .watch_hub import WatchHub
from .watch_tokens import WatchTokens
from .watcher import Watcher

# Message ids a watch remembers to send each message once, even when the
# model switches mid-watch (a kill switch) and keys move. Bounded: a watch
# may live for days.
_SENT_MEMORY = 10_000


@dataclass(frozen=True, slots=True)
class WatchQuery:
    """A validated WatchMessages request."""

    event_id: uuid.UUID
    read_model: ReadModel | None
    resume_token: str


@dataclass(frozen=True, slots=True)
class WatchUpdate:
    """One response: the messages that became visible (maybe none), the
    position after them as a token, and the model that served them."""

    messages: list[FeedMessage]
    resume_token: str
    read_model: ReadModel


class _Sent:
    """The ids sent recently, oldest forgotten first."""

    def __init__(self) -> None:
        self._ids: collections.OrderedDict[uuid.UUID, None] = collections.OrderedDict()

    def fresh(self, items: Sequence[Keyed]) -> list[Keyed]:
        out = [i for i in items if i[1].message_id not in self._ids]
        for _, m in out:
            self._ids[m.message_id] = None
        while len(self._ids) > _SENT_MEMORY:
            self._ids.popitem(last=False)
        return out


class FeedWatcher:
    """Serves watches through the hub; one catch-up query per watch at most,
    besides the hub's shared work."""

    def __init__(
        self,
        hub: WatchHub,
        store: WatchStore,
        tokens: WatchTokens,
        rollout: RolloutPolicy,
        settings: WatchSettings,
        *,
        query_timeout_s: float,
        limits: StreamLimits | None = None,
        on_delivered: Callable[[int, ReadModel], None] | None = None,
    ) -> None:
        self._hub = hub
        self._store = store
        self._tokens = tokens
        self._rollout = rollout
        self._settings = settings
        self._query_timeout = query_timeout_s
        self._limits = limits
        self._on_delivered = on_delivered

    async def watch(
        self, who: Principal, query: WatchQuery, *, time_remaining: Remaining = None
    ) -> AsyncIterator[WatchUpdate]:
        """Yields updates until the caller goes away or the watch must end.

        Raises:
            InvalidArgument: a malformed token, or one bound to something else.
            PermissionDenied: not (or no longer) an active guest of the event.
            FailedPrecondition: the token is too old to catch up from.
            Unavailable: the caller read too slowly (resumable), or the replica stops.
            ResourceExhausted: the caller holds too many streams.
        """
        with admitted(self._limits, who.actor, query.event_id):
            async for update in self._watch(who, query, time_remaining):
                yield update

    async def _watch(
        self, who: Principal, query: WatchQuery, time_remaining: Remaining
    ) -> AsyncIterator[WatchUpdate]:
        user = who.reader()
        token = self._tokens.open(query.resume_token) if query.resume_token else None
        choice = choose(
            query.read_model, token, self._rollout, query.event_id, user, may_pin=who.is_service
        )
        if choice.decision is not None:
            record.note_decision(choice.read_model.value, choice.label)
        if choice.requested is not None:
            record.note_requested(choice.requested.value)
        scope = TokenScope(query.event_id, user, choice.read_model)
        start = None
        if token is not None:
            start = token.position_for(scope, any_model=choice.carries(token))
        now = await self._hub.current()
        w = Watcher(query.event_id, user, choice.read_model, start or now, self._settings.buffer)
        self._hub.register(w)
        try:
            async for update in self._serve(w, choice.label, time_remaining):
                yield update
        finally:
            self._hub.unregister(w)

    async def _serve(
        self, w: Watcher, label: str, time_remaining: Remaining
    ) -> AsyncIterator[WatchUpdate]:
        sent = _Sent()
        heartbeat = self._settings.heartbeat_s
        first = True
        while True:
            if w.failure is not None:
                raise w.failure
            target = self._hub.behind(w)
            if target is not None or w.viewer is None:
                # Resumed from an older position, registered mid-tick, or just
                # started (an empty window: access and guest rows only).
                lo = w.pos
                hi = target or lo
                w.pos = hi  # the hub queues from here while this runs
                items = await self._catch_up(w, lo, hi, time_remaining)
                updates = list(self._updates(w, label, sent, items, hi))
                if first and not updates:
                    updates = [self._update(w, label, [], hi)]
            elif w.queue:
                batch = w.take()
                if batch.items is not None:
                    queued = batch.items
                else:
                    assert batch.raw is not None and w.viewer is not None
                    queued = select(batch.raw, w.model, w.viewer, batch.since)
                updates = list(self._updates(w, label, sent, queued, batch.end))
            elif time.monotonic() - w.last_sent < heartbeat:
                # The hub wakes us: a batch, a failure, falling behind, or a
                # heartbeat due (it keeps the clock, so no timer per wait here).
                w.wake.clear()
                await w.wake.wait()
                continue
            else:
                # Nothing queued and not behind: everything below w.pos was sent.
                updates = [self._update(w, label, [], w.pos)]
            for update in updates:
                yield update
                w.last_sent = time.monotonic()
                first = False

    async def _catch_up(
        self, w: Watcher, lo: datetime, hi: datetime, time_remaining: Remaining
    ) -> list[Keyed]:
        remaining = time_remaining() if time_remaining else None
        budget = Budget.of(self._query_timeout, remaining, Lane.BULK)
        limit = self._settings.max_catchup
        self._hub.count("catch_up")
        read = await self._store.catch_up(w.model, w.event_id, w.user_id, lo, hi, limit + 1, budget)
        if read.viewer is None:
            raise PermissionDenied(
                "you are not an active guest of this event",
                "NOT_EVENT_GUEST",
                {"event_id": str(w.event_id)},
            )
        w.viewer = read.viewer
        if len(read.changes) > limit:
            raise FailedPrecondition(
                f"more than {limit} messages arrived after this resume_token, too many to "
                "catch up on; reload the feed with ListMessages and watch from its watch_token",
                "WATCH_TOKEN_EXPIRED",
                {"max_catchup": str(limit)},
            )
        return caught_up(read.changes, read.viewer)

    def _updates(
        self, w: Watcher, label: str, sent: _Sent, items: Sequence[Keyed], end: datetime
    ) -> Iterator[WatchUpdate]:
        """Responses for `items` (each message once per watch), cut to size."""
        for messages, after in responses(sent.fresh(items), end):
            yield self._update(w, label, messages, after)

    def _update(
        self, w: Watcher, label: str, messages: list[FeedMessage], after: datetime
    ) -> WatchUpdate:
        if messages:
            if self._on_delivered is not None:
                self._on_delivered(len(messages), w.model)
            record.note_watch(
                len(messages),
                read_model=w.model.value,
                model_choice=label,
                event_id=str(w.event_id),
            )
        scope = TokenScope(w.event_id, w.user_id, w.model)
        return WatchUpdate(messages, self._tokens.encode(scope, after), w.model)
