"""The storage interface both read models implement, and what they share."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Protocol

import asyncpg

from ..model import Cursor, FeedMessage, MessageType, ReadModel, Viewer
from ..pgtypes import Conn

# The first page starts below every real row. A fixed sentinel (rather than a
# NULL cursor and `$3 IS NULL OR ...`) keeps one statement whose keyset
# condition is always an index condition, even in PostgreSQL's generic plans.
START = Cursor(datetime(9999, 12, 31, tzinfo=UTC), uuid.UUID(int=(1 << 128) - 1))


class FeedStore(Protocol):
    """Reads one page of a guest's feed.

    Implementations return at most `limit` messages strictly below `cursor`
    in (created_at, message_id) descending order, each message once.
    """

    read_model: ReadModel

    @property
    def name(self) -> str:
        """Short name for logs and span attributes."""
        ...

    async def page(
        self,
        conn: Conn,
        viewer: Viewer,
        cursor: Cursor | None,
        limit: int,
        *,
        timeout: float,
    ) -> list[FeedMessage]:
        """Returns the page of `viewer`'s feed below `cursor` (None: the newest)."""
        ...


def to_message(row: asyncpg.Record, viewer: Viewer, *, delivery_backed: bool) -> FeedMessage:
    """Builds a feed entry from a page row; the fallbacks are the plan's."""
    own = bool(row["is_own"])
    full_name: str | None = row["full_name"]
    if own:
        sender = full_name or viewer.guest_name or "You"
    else:
        sender = full_name or "Host"
    status: str | None = row["delivery_status"]
    if status is None:
        # No delivery to the caller: their own message was sent by them;
        # anything else has no SMS status to report.
        status = "sent" if own else ""
    return FeedMessage(
        message_id=row["id"],
        content=row["content"],
        created_at=row["created_at"],
        delivery_status=status,
        sender_name=sender,
        sender_avatar_url=row["avatar_url"] or "",
        message_type=MessageType(row["message_type"]),
        is_own_message=own,
        is_delivery_backed=delivery_backed,
    )
