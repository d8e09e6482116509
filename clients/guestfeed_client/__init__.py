"""Typed Python clients for guestfeed.v1 (asyncio and blocking)."""

from .aio import GuestFeedClient
from .errors import RPCError
from .sync import GuestFeedSyncClient

__all__ = ["GuestFeedClient", "GuestFeedSyncClient", "RPCError"]
