"""Storage: PostgreSQL through asyncpg, behind small interfaces.

The read models (`FeedStore`: v1 and v2 side by side), the `Database`
handle every reader borrows through, driver-error translation, and the
migrations. Nothing here imports gRPC.
"""

from __future__ import annotations

from ..domain.model import ReadModel
from .base import FeedStore, PageRead
from .database import Database
from .v1 import V1DeliveriesStore
from .v2 import V2MessagesStore

__all__ = [
    "Database",
    "FeedStore",
    "PageRead",
    "V1DeliveriesStore",
    "V2MessagesStore",
    "make_store",
]


def make_store(read_model: ReadModel, db: Database) -> FeedStore:
    """The one factory: the adapter for a read model, reading through `db`.

    Behind a transaction pooler (`db.mode`) the adapter reads pages through
    its function in the `guestfeed` schema (see `SqlFeedStore.function_ddl`).

    Raises:
        ValueError: an unknown read model (a bug: callers validate first).
    """
    if read_model is ReadModel.V1:
        return V1DeliveriesStore(db)
    if read_model is ReadModel.V2:
        return V2MessagesStore(db)
    raise ValueError(f"no feed store for read model {read_model!r}")
