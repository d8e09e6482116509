"""Domain types shared by the storage adapters, the feed and the servicers."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple


class ReadModel(enum.Enum):
    """The two ways to build a feed."""

    V1 = "v1"  # delivery-backed, the legacy path
    V2 = "v2"  # message-backed announcements and channels


class MessageType(enum.Enum):
    """Values of `public.message_type_enum`."""

    DIRECT = "direct"
    ANNOUNCEMENT = "announcement"
    CHANNEL = "channel"


@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """A keyset position: the feed continues with rows strictly below it.

    Ordered like the feed, so `(created_at, message_id)` ties are broken by the
    id and no two messages ever share a position.
    """

    created_at: datetime
    message_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class Viewer:
    """The caller as an active guest of one event.

    A user may hold more than one active guest row in an event (a host who is
    also on the guest list); their tags and guest ids are the union.
    """

    user_id: uuid.UUID
    event_id: uuid.UUID
    guest_ids: tuple[uuid.UUID, ...]
    tags: tuple[str, ...]
    guest_name: str | None


class FeedMessage(NamedTuple):
    """One feed entry, as both read models produce it.

    A NamedTuple rather than a frozen dataclass: a page builds fifty of these
    per call, and a frozen dataclass's __init__ (one object.__setattr__ per
    field) costs several times a tuple's (docs/performance.md).
    """

    message_id: uuid.UUID
    content: str
    created_at: datetime
    delivery_status: str
    sender_name: str
    sender_avatar_url: str
    message_type: MessageType
    is_own_message: bool
    is_delivery_backed: bool

    @property
    def cursor(self) -> Cursor:
        """The keyset position of this message."""
        return Cursor(self.created_at, self.message_id)
