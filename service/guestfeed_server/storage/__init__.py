"""Storage adapters: one `FeedStore` interface, v1 and v2 side by side."""

from __future__ import annotations

from ..model import ReadModel
from .access import load_viewer
from .base import FeedStore
from .v1 import V1DeliveriesStore
from .v2 import V2MessagesStore

__all__ = ["FeedStore", "V1DeliveriesStore", "V2MessagesStore", "load_viewer", "make_store"]


def make_store(read_model: ReadModel) -> FeedStore:
    """The one factory: returns the adapter for a read model.

    Raises:
        ValueError: an unknown read model (a bug: callers validate first).
    """
    if read_model is ReadModel.V1:
        return V1DeliveriesStore()
    if read_model is ReadModel.V2:
        return V2MessagesStore()
    raise ValueError(f"no feed store for read model {read_model!r}")
