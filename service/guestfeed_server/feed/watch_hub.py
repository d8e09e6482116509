"""The watch hub: one reader per replica finds new visible rows for every watcher.

Each tick (GUESTFEED_WATCH_TICK_MS) the hub runs two statements, whatever
the number of watchers: the horizon H_new (storage/horizon.py: no
transaction can still commit a row keyed below it), then every row keyed in
[H, H_new) of every watched event. The second runs after the first has
returned, so its snapshot holds every transaction that started before
H_new. The rows are then fanned out in memory (`watch_fanout.select`) into
each watcher's bounded queue. Once a second one more statement re-reads
every watcher's guest rows (removal ends a watch, tags apply from then on)
and the kill switches are re-applied.

A watcher has a position: everything keyed below it is queued or sent. A
tick serves the watchers whose position lies in its window; one that is
behind the hub (it resumed from an older token, or registered while a tick
was in flight) catches up by itself with one query (`FeedWatcher`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, TypeVar

from ..domain.budget import Budget
from ..domain.errors import GuestFeedError, PermissionDenied, Unavailable
from ..domain.model import ReadModel
from ..rollout import Reason, RolloutPolicy
from ..settings import WatchSettings
from ..storage.horizon import Horizon, HorizonSpec
from ..storage.watch import WatchStore
from ..telemetry import untraced
from ..telemetry.background import stop_background
from .choice import KILLS
from .watch_fanout import EventChanges, by_event, select
from .watcher import Batch, Watcher

log = logging.getLogger(__name__)
T = TypeVar("T")

# A horizon this recent may start a watch or mark a first page (any horizon
# is correct; an older one only repeats more messages the client has).
FRESH_S = 1.0
# An open transaction holding the horizon back this long is logged (once).
HELD_BACK_LOG_S = 10.0


class WatchHub:
    """One per replica (app.py); idle, with no task and no query, without watchers."""

    def __init__(
        self,
        store: WatchStore,
        settings: WatchSettings,
        rollout: RolloutPolicy,
        *,
        query_timeout_s: float,
        on_query: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._rollout = rollout
        self._budget = Budget(query_timeout_s)
        self.spec = HorizonSpec(settings.margin_s, settings.safe_lag_s)
        self._on_query = on_query
        # Where the ticks have reached: every live watcher's rows below it are queued.
        self.position: datetime | None = None
        self.horizon: Horizon | None = None
        self.queries: collections.Counter[str] = collections.Counter()
        self.ticks = 0
        self._ticked_at = -1e9
        self._accessed_at = -1e9
        self._cached: tuple[float, datetime] | None = None
        self._pending: asyncio.Task[Horizon] | None = None
        self._events: dict[uuid.UUID, set[Watcher]] = {}
        self._count = 0
        self._active = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing: GuestFeedError | None = None
        self._held_back = False
        # The rollout config revision the V2 watches were last decided under.
        self._revision: int | None = None

    @property
    def watchers(self) -> int:
        """Watchers registered now."""
        return self._count

    def buffered(self) -> list[int]:
        """Messages queued and not yet taken, per watcher (each at most its buffer)."""
        return [w.buffered for ws in self._events.values() for w in ws]

    @property
    def exact(self) -> bool:
        """False while the last horizon was a safe-mode one (see docs/watch.md)."""
        return self.horizon is None or self.horizon.exact

    @property
    def lag_s(self) -> float:
        """How far behind its statement time the last horizon was, in seconds."""
        return self.horizon.lag_s if self.horizon is not None else 0.0

    def count(self, kind: str) -> None:
        """Counts one statement (guestfeed.watch.queries, by kind)."""
        self.queries[kind] += 1
        if self._on_query is not None:
            self._on_query(kind)

    async def probe(self) -> Horizon:
        """One horizon query (start-up: says at once whether the grant is there)."""
        return await self._shared_horizon()

    def fresh(self) -> datetime | None:
        """A horizon at most FRESH_S old (the hub's, or the last one read), or None."""
        now = time.monotonic()
        best: datetime | None = None
        if self.position is not None and now - self._ticked_at <= FRESH_S:
            best = self.position
        elif self._cached is not None and now - self._cached[0] <= FRESH_S:
            best = self._cached[1]
        return None if best is None else self._raise(best)

    def note(self, h: Horizon) -> datetime:
        """Takes a horizon read elsewhere (with a first page), as if read here, and
        returns it as it is: only a horizon read before the page's snapshot may
        mark that page, never the hub's, which may have moved on since."""
        self._note(h)
        self._cached = (time.monotonic(), h.at)
        self._raise(h.at)
        return h.at

    async def current(self) -> datetime:
        """A horizon for a new watch: a fresh one (see `fresh`), else one read
        now (one query, shared by concurrent callers)."""
        best = self.fresh()
        if best is None:
            best = self._raise((await self._shared_horizon()).at)
        return best

    def _raise(self, at: datetime) -> datetime:
        """The later of `at` and the hub's position (any horizon is correct, a later
        one repeats less); with no watcher, the hub's position moves up to it, so
        the next watcher starts live rather than catching up from a stale one."""
        if self.position is not None and self.position > at:
            return self.position
        if self._count == 0:
            self.position = at
        return at

    def behind(self, w: Watcher) -> datetime | None:
        """The hub's position if `w` is below it (it must catch up), else None."""
        if self.position is not None and w.pos < self.position:
            return self.position
        return None

    def register(self, w: Watcher) -> None:
        """Adds a watcher; the tick loop starts with the first.

        Raises:
            Unavailable: the replica is shutting down.
        """
        if self._closing is not None:
            raise self._closing
        self._events.setdefault(w.event_id, set()).add(w)
        self._count += 1
        self._active.set()
        if self._task is None:
            self._task = _detached(self._run(), "guestfeed-watch-hub")

    def unregister(self, w: Watcher) -> None:
        """Removes a watcher (idempotent); the loop idles after the last."""
        watchers = self._events.get(w.event_id)
        if watchers is None or w not in watchers:
            return
        watchers.discard(w)
        if not watchers:
            del self._events[w.event_id]
        self._count -= 1
        w.queue.clear()
        w.buffered = 0
        if self._count == 0:
            self._active.clear()

    def end_watches(self) -> None:
        """Shutdown: every watch ends with UNAVAILABLE (resumable elsewhere), and
        new ones are refused, so the server's grace period is not spent on them."""
        self._closing = Unavailable(
            "this replica is shutting down; watch again with your last resume_token",
            "SERVER_SHUTTING_DOWN",
        )
        for watchers in list(self._events.values()):
            for w in list(watchers):
                w.fail(self._closing)

    async def stop(self) -> None:
        """Stops the loop and any shared horizon query."""
        await stop_background(self._task)
        self._task = None
        if self._pending is not None:
            self._pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pending

    async def _run(self) -> None:
        failing = False
        while True:
            await self._active.wait()
            started = time.monotonic()
            try:
                await self._tick()
                if started - self._accessed_at >= self._settings.access_s:
                    self._accessed_at = started
                    await self._refresh_access()
                if failing:
                    log.info("live updates: ticks succeed again")
                failing = False
            except Exception as exc:
                if not failing:
                    log.warning("live updates: a tick failed, retrying every tick: %r", exc)
                failing = True
            self._heartbeats()
            await asyncio.sleep(max(0.0, self._settings.tick_s - (time.monotonic() - started)))

    def _heartbeats(self) -> None:
        """Wakes the watches that sent nothing for a heartbeat interval: they send
        an empty response (one timer here, instead of one per watch per wait)."""
        due = time.monotonic() - self._settings.heartbeat_s
        for watchers in self._events.values():
            for w in watchers:
                if w.last_sent <= due:
                    w.wake.set()

    async def _shared_horizon(self) -> Horizon:
        if self._pending is None or self._pending.done():
            self._pending = _detached(self._read_horizon(), "guestfeed-watch-horizon")
            # Read here too: a caller that gave up must not leave the error unread.
            self._pending.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await asyncio.shield(self._pending)

    async def _read_horizon(self) -> Horizon:
        self.count("horizon")
        h = await self._store.horizon(self.spec, self._budget)
        self._note(h)
        self._cached = (time.monotonic(), h.at)
        return h

    def _note(self, h: Horizon) -> None:
        """Logs the mode when it changes, and a transaction that holds updates back."""
        if self.horizon is None or self.horizon.exact != h.exact:
            if not h.exact:
                log.warning(
                    "live updates in safe mode: %d session(s) of other roles are hidden from "
                    "pg_stat_activity (this role lacks pg_read_all_stats), so the horizon is "
                    "held %g s behind now (GUESTFEED_WATCH_SAFE_LAG_S): updates arrive that "
                    "late, and a writer transaction open longer than that could be missed. "
                    "GRANT pg_read_all_stats TO the service's role (read-only) for exact mode",
                    h.hidden,
                    self._settings.safe_lag_s,
                )
            elif self.horizon is not None:
                log.info("live updates in exact mode again: every session is visible")
        held = h.exact and h.lag_s > HELD_BACK_LOG_S and h.oldest_pid is not None
        if held and not self._held_back:
            log.warning(
                "live updates held back %.1f s by an open transaction (pid %s, %s, started "
                "%s); set idle_in_transaction_session_timeout to bound this",
                h.lag_s,
                h.oldest_pid,
                h.oldest_state,
                h.oldest_start,
            )
        self._held_back = held
        self.horizon = h

    async def _tick(self) -> None:
        h = await self._read_horizon()
        new = h.at
        base = self.position
        if base is not None and new <= base:
            self._ticked_at = time.monotonic()
            return
        snapshot = [w for ws in self._events.values() for w in ws if w.failure is None]
        live = [w for w in snapshot if base is not None and base <= w.pos < new]
        if live:
            lo = min(w.pos for w in live)
            self.count("changes")
            rows = await self._store.changes(
                list({w.event_id for w in live}),
                list({w.user_id for w in live}),
                lo,
                new,
                self._budget,
            )
            self._fan_out(live, by_event(rows), new)
        # (Not `base`: `_raise` may have moved the position while the query ran.)
        self.position = new if self.position is None else max(self.position, new)
        self._ticked_at = time.monotonic()
        self.ticks += 1
        for w in snapshot:
            if w.pos < self.position:
                w.wake.set()  # behind: its own catch-up takes over

    def _fan_out(
        self, live: list[Watcher], events: dict[uuid.UUID, EventChanges], new: datetime
    ) -> None:
        for w in live:
            if w.failure is not None:
                continue  # removed or overflowed while the query ran
            ev = events.get(w.event_id)
            since, w.pos = w.pos, new
            if ev is None:
                continue
            if w.viewer is None:
                # Its first catch-up is still reading its guest rows: keep the
                # event's rows and select from them once they are known.
                w.offer(Batch(None, ev, since, new, ev.rows))
                continue
            items = select(ev, w.model, w.viewer, since)
            if items:
                w.offer(Batch(items, None, since, new, len(items)))

    async def _refresh_access(self) -> None:
        watchers = [w for ws in self._events.values() for w in ws]
        if not watchers:
            return
        pairs = list({(w.event_id, w.user_id) for w in watchers})
        self.count("access")
        viewers = await self._store.viewers(pairs, self._budget)
        for w in watchers:
            viewer = viewers.get((w.event_id, w.user_id))
            if viewer is None:
                w.fail(
                    PermissionDenied(
                        "you are not an active guest of this event",
                        "NOT_EVENT_GUEST",
                        {"event_id": str(w.event_id)},
                    )
                )
                continue
            if w.viewer is not None:
                w.viewer = viewer
        self._apply_rollout([w for w in watchers if w.model is ReadModel.V2])

    def _apply_rollout(self, v2: list[Watcher]) -> None:
        """The rollout's rollbacks apply mid-watch, as to a page token (feed/choice.py):
        a kill switch moves every V2 watch to V1 from its position, and so does an
        override (a user's, or an event's from the guard) that sends a pair to V1.
        The kill switches are the same for every pair, so one decision tells; the
        pairs are decided again only when the stored config has a new revision
        (hashing a thousand pairs every second would be most of the hub's CPU)."""
        if not v2:
            return
        probe = self._rollout.decide(v2[0].event_id, v2[0].user_id)
        if probe.reason in KILLS:
            for w in v2:
                w.model = ReadModel.V1
            return
        if probe.config_revision == self._revision:
            return
        self._revision = probe.config_revision
        for w in v2:
            d = self._rollout.decide(w.event_id, w.user_id)
            if d.read_model is ReadModel.V1 and d.reason is not Reason.PERCENTAGE:
                w.model = ReadModel.V1


def _detached(job: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
    """A task in a context of its own, untraced: the hub's work is shared by every
    watcher and page, so it must not carry the span and RPC record of whichever
    call happened to start it."""

    def make() -> asyncio.Task[T]:
        with untraced():
            return asyncio.create_task(job, name=name)

    return contextvars.Context().run(make)
