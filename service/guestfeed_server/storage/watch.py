"""Live updates' reads: the horizon, a tick's changes, access, one watcher's catch-up.

The statements are in `watch_sql.py`; this module runs them through the
shared `Database` (so driver errors leave as domain errors) and returns
plain rows. Who sees which row is decided above, in `feed/watch_fanout.py`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple, Protocol

import asyncpg

from ..domain.budget import Budget
from ..domain.model import ReadModel, Viewer
from .database import Database
from .horizon import Horizon, HorizonSpec, read_horizon
from .watch_sql import CATCH_UP_V1_SQL, CATCH_UP_V2_SQL, CHANGES_SQL, VIEWERS_SQL


class Change(NamedTuple):
    """One row that may make a message visible to someone.

    `path` is "m" for the message's own row (keyed by its created_at), "v1"
    or "v2" for a delivery to `recipient` that shows it in that read model
    (keyed by the delivery's created_at). Catch-up rows are already the
    watcher's, so their `prior` flags are False.
    """

    path: str
    key: datetime
    recipient: uuid.UUID | None
    sms_status: str | None
    prior: bool
    own_prior_v1: bool
    own_prior_v2: bool
    message_id: uuid.UUID
    event_id: uuid.UUID
    content: str
    created_at: datetime
    message_type: str
    sender: uuid.UUID | None
    full_name: str | None
    avatar_url: str | None
    scheduled: bool
    target_tags: tuple[str, ...] | None


class CatchUp(NamedTuple):
    """One watcher's rows in a window (None viewer: not an active guest)."""

    viewer: Viewer | None
    changes: list[Change]


class WatchStore(Protocol):
    """What the watch hub and its watchers read; every call is one statement."""

    async def horizon(self, spec: HorizonSpec, budget: Budget) -> Horizon:
        """The current horizon (see `Horizon`)."""
        ...

    async def changes(
        self,
        events: Sequence[uuid.UUID],
        users: Sequence[uuid.UUID],
        lo: datetime,
        hi: datetime,
        budget: Budget,
    ) -> list[Change]:
        """Rows keyed in [lo, hi) of `events`, deliveries to `users` only, in key order."""
        ...

    async def viewers(
        self, pairs: Sequence[tuple[uuid.UUID, uuid.UUID]], budget: Budget
    ) -> dict[tuple[uuid.UUID, uuid.UUID], Viewer]:
        """The (event, user) pairs that are active guests, as viewers."""
        ...

    async def catch_up(
        self,
        model: ReadModel,
        event_id: uuid.UUID,
        user_id: uuid.UUID,
        lo: datetime,
        hi: datetime,
        limit: int,
        budget: Budget,
    ) -> CatchUp:
        """At most `limit` of the watcher's messages keyed in [lo, hi), in key order."""
        ...


class SqlWatchStore:
    """`WatchStore` on PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def horizon(self, spec: HorizonSpec, budget: Budget) -> Horizon:
        """See `WatchStore.horizon`."""
        async with self._db.acquire(budget) as conn:
            return await read_horizon(conn, spec, budget.seconds())

    async def changes(
        self,
        events: Sequence[uuid.UUID],
        users: Sequence[uuid.UUID],
        lo: datetime,
        hi: datetime,
        budget: Budget,
    ) -> list[Change]:
        """See `WatchStore.changes`."""
        async with self._db.acquire(budget) as conn:
            rows = await conn.fetch(
                CHANGES_SQL, list(events), list(users), lo, hi, timeout=budget.seconds()
            )
        return [_change(r) for r in rows]

    async def viewers(
        self, pairs: Sequence[tuple[uuid.UUID, uuid.UUID]], budget: Budget
    ) -> dict[tuple[uuid.UUID, uuid.UUID], Viewer]:
        """See `WatchStore.viewers`."""
        if not pairs:
            return {}
        async with self._db.acquire(budget) as conn:
            rows = await conn.fetch(
                VIEWERS_SQL,
                [e for e, _ in pairs],
                [u for _, u in pairs],
                timeout=budget.seconds(),
            )
        return {
            (r["event_id"], r["user_id"]): Viewer(
                user_id=r["user_id"],
                event_id=r["event_id"],
                guest_ids=tuple(r["guest_ids"]),
                tags=tuple(r["tags"]),
                guest_name=r["guest_name"],
            )
            for r in rows
        }

    async def catch_up(
        self,
        model: ReadModel,
        event_id: uuid.UUID,
        user_id: uuid.UUID,
        lo: datetime,
        hi: datetime,
        limit: int,
        budget: Budget,
    ) -> CatchUp:
        """See `WatchStore.catch_up`."""
        sql = CATCH_UP_V1_SQL if model is ReadModel.V1 else CATCH_UP_V2_SQL
        async with self._db.acquire(budget) as conn:
            rows = await conn.fetch(sql, event_id, user_id, lo, hi, limit, timeout=budget.seconds())
        if not rows:
            return CatchUp(None, [])
        head = rows[0]
        viewer = Viewer(
            user_id=user_id,
            event_id=event_id,
            guest_ids=tuple(head["guest_ids"]),
            tags=tuple(head["tags"]),
            guest_name=head["guest_name"],
        )
        return CatchUp(viewer, [_change(r, catch_up=True) for r in rows[1:]])


def _change(r: asyncpg.Record, *, catch_up: bool = False) -> Change:
    tags = r["target_guest_tags"]
    return Change(
        path=r["path"],
        key=r["key"],
        recipient=None if catch_up else r["recipient"],
        sms_status=r["sms_status"],
        prior=False if catch_up else r["prior"],
        own_prior_v1=False if catch_up else bool(r["own_prior_v1"]),
        own_prior_v2=False if catch_up else bool(r["own_prior_v2"]),
        message_id=r["id"],
        event_id=r["event_id"],
        content=r["content"],
        created_at=r["created_at"],
        message_type=r["message_type"],
        sender=r["sender_user_id"],
        full_name=r["full_name"],
        avatar_url=r["avatar_url"],
        scheduled=bool(r["scheduled"]),
        target_tags=None if tags is None else tuple(tags),
    )
