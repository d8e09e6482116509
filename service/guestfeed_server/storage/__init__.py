"""Storage adapters: one `FeedStore` interface, v1 and v2 side by side."""

from __future__ import annotations

from ..model import ReadModel
from .access import load_viewer
from .base import FeedStore
from .v1 import V1DeliveriesStore
from .v2 import V2MessagesStore

__all__ = ["FeedStore", "V1DeliveriesStore", "V2MessagesStore", "load_viewer", "make_store"]


def make_store(read_model: ReadModel, *, server_side: bool = False) -> FeedStore:
    """The one factory: returns the adapter for a read model.

    `server_side` reads pages through the store's function in the `guestfeed`
    schema (for transaction-mode poolers; see `SqlFeedStore.function_ddl`).

    Raises:
        ValueError: an unknown read model (a bug: callers validate first).
    """
    if read_model is ReadModel.V1:
        return V1DeliveriesStore(server_side=server_side)
    if read_model is ReadModel.V2:
        return V2MessagesStore(server_side=server_side)
    raise ValueError(f"no feed store for read model {read_model!r}")
