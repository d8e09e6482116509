"""Typed Python clients for guestfeed.v1 (asyncio and blocking)."""

from .aio import GuestFeedClient
from .errors import RPCError
from .policy import NO_RETRY, RETRYABLE, AsyncTokenSource, RetryPolicy, TokenSource
from .sync import GuestFeedSyncClient

__all__ = [
    "NO_RETRY",
    "RETRYABLE",
    "AsyncTokenSource",
    "GuestFeedClient",
    "GuestFeedSyncClient",
    "RPCError",
    "RetryPolicy",
    "TokenSource",
]
