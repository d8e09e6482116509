"""The feed use case: which read model serves a guest, page tokens, pages and streams.

It knows storage only through the `FeedStore` protocol and never imports gRPC.
"""

from .choice import ChoiceSource, ModelChoice
from .query import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, FeedQuery, coerce_page_size
from .reader import FeedPage, FeedReader, Remaining
from .tokens import PageToken, PageTokens, TokenScope

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "ChoiceSource",
    "FeedPage",
    "FeedQuery",
    "FeedReader",
    "ModelChoice",
    "PageToken",
    "PageTokens",
    "Remaining",
    "TokenScope",
    "coerce_page_size",
]
