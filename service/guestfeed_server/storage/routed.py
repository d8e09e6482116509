"""A `FeedStore` whose pages are read where the `ReadRouter` says.

The feed use case keeps its one store per read model and never learns that
replicas exist: this store asks the router for a database for every page and
runs the model's ordinary SQL store on it (one per database, made once).

  * A page after a cursor (ListMessages' later pages, a stream's later
    batches) takes bounded staleness: a replica within
    GUESTFEED_REPLICA_MAX_LAG_MS, else the primary. The access check is in
    the same statement, so a guest removed on the primary may still read such
    a page for at most that long; that is the documented bound.
  * A first page (no cursor) carries a watch token, which promises every row
    below a horizon read on the primary (storage/horizon.py). So it is fenced:
    the horizon, when asked for, and then the primary's WAL position are read
    on the primary, and the page is read on a replica only once that replica
    has replayed that position (else on the primary). A first page is thus as
    fresh as the primary, on whichever server.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from ..domain.budget import Budget
from ..domain.model import Cursor, ReadModel
from .base import FeedStore, PageRead
from .database import Database
from .horizon import HorizonSpec
from .replica_state import Route
from .replicas import ReadRouter


class RoutedFeedStore:
    """One read model's pages, read through the router (see the module docstring)."""

    def __init__(
        self,
        read_model: ReadModel,
        router: ReadRouter,
        factory: Callable[[ReadModel, Database], FeedStore],
    ) -> None:
        self.read_model = read_model
        self._router = router
        self._factory = factory
        self._stores: dict[Database, FeedStore] = {}
        self._primary = self.on(router.primary)

    @property
    def name(self) -> str:
        """The model's store's short name (the same on every database)."""
        return self._primary.name

    def on(self, db: Database) -> FeedStore:
        """The model's SQL store on `db`."""
        store = self._stores.get(db)
        if store is None:
            store = self._stores[db] = self._factory(self.read_model, db)
        return store

    async def read(
        self,
        event_id: uuid.UUID,
        user_id: uuid.UUID,
        cursor: Cursor | None,
        limit: int,
        budget: Budget,
        *,
        horizon: HorizonSpec | None = None,
    ) -> PageRead:
        """See `FeedStore.read`; where it runs is the router's choice."""
        router = self._router

        async def page(db: Database) -> PageRead:
            return await self.on(db).read(event_id, user_id, cursor, limit, budget)

        if cursor is not None:
            return await router.read(page, budget)
        if not router.any_up():
            # Nothing to fence for: the page and its horizon on one primary
            # connection, exactly as without replicas.
            async def first(db: Database) -> PageRead:
                return await self.on(db).read(
                    event_id, user_id, cursor, limit, budget, horizon=horizon
                )

            return await router.on_primary(first, Route.NO_REPLICA)
        mark, lsn = await router.fence(budget, horizon)
        read = await router.read(page, budget, at_least=lsn)
        return read if mark is None else read._replace(horizon=mark)
