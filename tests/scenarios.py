"""Random feeds for property tests: the specs Hypothesis draws, and writing them.

One event, seen by a viewer who may hold a second guest row, with a few
dozen messages of every type over a handful of instants (ties everywhere),
channel audiences, senders and SMS retries. Used at the gRPC level
(test_pagination) and the store level (test_store_contract).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from hypothesis import strategies as st

from .factory import BASE, World

TAGS = ("a", "b", "c")
# Few instants, two of them one microsecond apart: ties everywhere, and a cursor
# that rounded to milliseconds (or seconds) would lose or repeat messages.
TIMES = (
    BASE + timedelta(days=30),
    BASE + timedelta(days=30, seconds=1),
    BASE + timedelta(days=30, seconds=1, microseconds=1),
    BASE + timedelta(days=30, seconds=7),
)
# "unscheduled": a channel message with no scheduled message.
CHANNEL_TARGETS: tuple[Any, ...] = ("unscheduled", None, (), ("a",), ("b",), ("a", "c"))
RECIPIENTS = ("viewer_user", "viewer_guest", "viewer_both", "viewer_second_row", "other")
SENDERS = ("host", "viewer", "other", "nobody")
STATUSES = ("pending", "sent", "delivered", "failed")


@dataclass(frozen=True)
class MessageSpec:
    """One message to write: its type, sender, instant, channel audience, deliveries."""

    type: str
    sender: str
    at: int
    target: Any
    deliveries: tuple[tuple[str, str, int], ...]


message_specs = st.builds(
    MessageSpec,
    type=st.sampled_from(("direct", "announcement", "channel")),
    sender=st.sampled_from(SENDERS),
    at=st.integers(0, len(TIMES) - 1),
    target=st.sampled_from(CHANNEL_TARGETS),
    deliveries=st.lists(
        st.tuples(
            st.sampled_from(RECIPIENTS),
            st.sampled_from(STATUSES),
            st.integers(0, len(TIMES) - 1),
        ),
        max_size=3,
    ).map(tuple),
)


@dataclass(frozen=True)
class EventSpec:
    """One event's contents, seen by a viewer who may hold a second guest row."""

    viewer_tags: tuple[str, ...]
    second_row_tags: tuple[str, ...] | None
    messages: tuple[MessageSpec, ...]
    page_size: int


event_specs = st.builds(
    EventSpec,
    viewer_tags=st.lists(st.sampled_from(TAGS), unique=True, max_size=2).map(tuple),
    second_row_tags=st.none() | st.lists(st.sampled_from(TAGS), unique=True, max_size=2).map(tuple),
    # A uniform count: plain st.lists favours tiny feeds, and pages need many messages.
    messages=st.integers(0, 40).flatmap(
        lambda n: st.lists(message_specs, min_size=n, max_size=n).map(tuple)
    ),
    page_size=st.sampled_from((0, 1, 2, 3, 4, 5, 6, 7)),
)


async def build_event(world: World, spec: EventSpec) -> tuple[uuid.UUID, uuid.UUID]:
    """Writes one fresh event from `spec`; returns (event, viewer)."""
    host = await world.user("Host")
    event = await world.event(host)
    viewer, viewer_guest = await world.member(event, tags=spec.viewer_tags)
    second_row = None
    if spec.second_row_tags is not None:
        second_row = await world.guest(event, viewer, tags=spec.second_row_tags, role="host")
    other, other_guest = await world.member(event, tags=("b",))
    senders = {"host": host, "viewer": viewer, "other": other, "nobody": None}
    recipients: dict[str, tuple[uuid.UUID | None, uuid.UUID | None]] = {
        "viewer_user": (viewer, None),
        "viewer_guest": (None, viewer_guest),
        "viewer_both": (viewer, viewer_guest),
        "viewer_second_row": (None, second_row or viewer_guest),
        "other": (other, other_guest),
    }
    for m in spec.messages:
        scheduled = None
        if m.type == "channel" and m.target != "unscheduled":
            scheduled = await world.schedule(event, m.target)
        mid = await world.message(
            event, m.type, sender=senders[m.sender], scheduled_id=scheduled, created_at=TIMES[m.at]
        )
        for who, status, at in m.deliveries:
            user_id, guest_id = recipients[who]
            await world.deliver(
                mid, user_id=user_id, guest_id=guest_id, status=status, created_at=TIMES[at]
            )
    return event, viewer
