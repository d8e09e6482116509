"""One watch as the hub sees it: its position, its bounded queue, how it ends."""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from datetime import datetime
from typing import NamedTuple

from ..domain.errors import GuestFeedError, Unavailable
from ..domain.model import ReadModel, Viewer
from .watch_fanout import EventChanges, Keyed


class Batch(NamedTuple):
    """What one tick queued for a watcher: its messages (or, before the watcher
    knows its own guest rows, the event's raw rows), and the position after."""

    items: list[Keyed] | None
    raw: EventChanges | None
    since: datetime
    end: datetime
    size: int


class Watcher:
    """One WatchMessages call as the hub sees it."""

    def __init__(
        self, event_id: uuid.UUID, user_id: uuid.UUID, model: ReadModel, pos: datetime, limit: int
    ) -> None:
        self.event_id = event_id
        self.user_id = user_id
        self.model = model
        # None until the watcher's first catch-up has read its guest rows.
        self.viewer: Viewer | None = None
        self.pos = pos
        self.limit = limit
        self.queue: collections.deque[Batch] = collections.deque()
        self.buffered = 0
        self.failure: GuestFeedError | None = None
        self.wake = asyncio.Event()
        # time.monotonic() of the last response sent (the hub's heartbeat clock).
        self.last_sent = time.monotonic()

    def offer(self, batch: Batch) -> None:
        """Queues a batch, or fails the watch when its buffer would overflow."""
        if self.buffered + batch.size > self.limit:
            self.fail(
                Unavailable(
                    f"you read too slowly: more than {self.limit} messages were waiting for "
                    "you; watch again with the last resume_token you received (nothing is lost)",
                    "WATCH_BUFFER_FULL",
                    {"buffer": str(self.limit)},
                )
            )
            return
        self.queue.append(batch)
        self.buffered += batch.size
        self.wake.set()

    def take(self) -> Batch:
        """The oldest queued batch."""
        batch = self.queue.popleft()
        self.buffered -= batch.size
        return batch

    def fail(self, error: GuestFeedError) -> None:
        """Ends the watch with `error` at its next step; its queue is dropped at
        once (a resume reads it again), so a stuck client holds no memory."""
        if self.failure is None:
            self.failure = error
        self.queue.clear()
        self.buffered = 0
        self.wake.set()
