"""Who sees which of a tick's rows: the feed's visibility rules, in memory.

The hub reads one tick's rows for every watched event at once
(`storage.watch.Change`); this module applies one watcher's visibility to
them: the read model, the watcher's tags, their own messages, the
deliveries addressed to them. It mirrors the page statements
(storage/v1.py, storage/v2.py) and the keys of storage/watch_sql.py:

* v1: a message is visible through the first delivery to the user, or as
  their own message (keyed by the message row unless a delivery came first);
* v2: announcements; channel messages whose scheduled message targets no tag
  or one of the watcher's; the user's own messages; direct messages through
  the first delivery to the user or one of their guest rows.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ..domain.model import FeedMessage, MessageType, ReadModel, Viewer
from ..storage.watch import Change

# A message with the position at which it became visible.
Keyed = tuple[datetime, FeedMessage]

_TYPES = {t.value: t for t in MessageType}
# Responses are cut at this many messages (where the key changes), so a bulk
# send never makes one response larger than a client accepts (4 MB by default).
MAX_PER_RESPONSE = 200


@dataclass(slots=True)
class EventChanges:
    """One event's rows of a tick, indexed the way watchers look them up."""

    # Announcements and channel messages: the same for every v2 watcher.
    shared: list[Change] = field(default_factory=list)
    # Message rows by sender: someone's own messages.
    by_sender: dict[uuid.UUID, list[Change]] = field(default_factory=lambda: defaultdict(list))
    # Delivery rows by (path, recipient).
    deliveries: dict[tuple[str, uuid.UUID], list[Change]] = field(
        default_factory=lambda: defaultdict(list)
    )
    # A shared message is built once and handed to every watcher it shows to.
    built: dict[uuid.UUID, FeedMessage] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """How many rows this event has in the tick (an upper bound on a watcher's share)."""
        return (
            len(self.shared)
            + sum(len(v) for v in self.by_sender.values())
            + sum(len(v) for v in self.deliveries.values())
        )


def by_event(changes: Iterable[Change]) -> dict[uuid.UUID, EventChanges]:
    """Groups a tick's rows by event."""
    out: dict[uuid.UUID, EventChanges] = {}
    for c in changes:
        ev = out.get(c.event_id)
        if ev is None:
            ev = out[c.event_id] = EventChanges()
        if c.path == "m":
            if c.message_type in ("announcement", "channel"):
                ev.shared.append(c)
            if c.sender is not None:
                ev.by_sender[c.sender].append(c)
        elif c.recipient is not None:
            ev.deliveries[(c.path, c.recipient)].append(c)
    return out


def select(ev: EventChanges, model: ReadModel, viewer: Viewer, since: datetime) -> list[Keyed]:
    """The messages of `ev` that became visible to `viewer` at or after `since`,
    in key order, each once (at its smallest key)."""
    user = viewer.user_id
    best: dict[uuid.UUID, Keyed] = {}

    def offer(key: datetime, msg: FeedMessage) -> None:
        if key < since:
            return
        held = best.get(msg.message_id)
        if held is None or key < held[0]:
            best[msg.message_id] = (key, msg)

    if model is ReadModel.V2:
        tags = set(viewer.tags)
        for c in ev.shared:
            if c.sender == user or not _v2_shows(c, tags):
                continue  # own messages are built below, as the sender sees them
            msg = ev.built.get(c.message_id)
            if msg is None:
                msg = ev.built[c.message_id] = feed_message(c, viewer, via_delivery=False)
            offer(c.key, msg)
    for c in ev.by_sender.get(user, ()):
        # Own messages, unless a delivery to the sender came before the row.
        # (own_prior_v2 is only ever set on direct messages: v2 shows nothing
        # else through deliveries.)
        if not (c.own_prior_v2 if model is ReadModel.V2 else c.own_prior_v1):
            offer(c.key, feed_message(c, viewer, via_delivery=False))
    for c in ev.deliveries.get((model.value, user), ()):
        if c.prior or (c.sender == user and c.created_at <= c.key):
            continue  # seen through an earlier delivery, or keyed by the own message row
        offer(c.key, feed_message(c, viewer, via_delivery=True))
    return sorted(best.values(), key=_order)


def _v2_shows(c: Change, tags: set[str]) -> bool:
    if c.message_type == "announcement":
        return True
    # A channel message: no scheduled message, no audience (fail closed).
    return c.scheduled and (not c.target_tags or not tags.isdisjoint(c.target_tags))


def feed_message(c: Change, viewer: Viewer, *, via_delivery: bool) -> FeedMessage:
    """A feed entry as of when the message became visible: the status of the
    delivery that showed it ("sent" for own messages, else empty)."""
    own = c.sender is not None and c.sender == viewer.user_id
    if via_delivery:
        status = c.sms_status or ""
    else:
        status = "sent" if own else ""
    if own:
        name = c.full_name or viewer.guest_name or "You"
    else:
        name = c.full_name or "Host"
    return FeedMessage(
        c.message_id,
        c.content,
        c.created_at,
        status,
        name,
        c.avatar_url or "",
        _TYPES[c.message_type],
        own,
        via_delivery,
    )


def caught_up(changes: Sequence[Change], viewer: Viewer) -> list[Keyed]:
    """A catch-up's rows (already the viewer's, in key order) as feed entries."""
    return [(c.key, feed_message(c, viewer, via_delivery=c.path != "m")) for c in changes]


def responses(
    items: Sequence[Keyed], end: datetime
) -> Iterator[tuple[list[FeedMessage], datetime]]:
    """`items` cut into responses of at most MAX_PER_RESPONSE messages, each with
    the position after it: the next unsent key, or `end` after the last. A cut
    falls only where the key changes, so a position never splits a tie."""
    start = 0
    n = len(items)
    while start < n:
        stop = min(start + MAX_PER_RESPONSE, n)
        while stop < n and items[stop][0] == items[stop - 1][0]:
            stop += 1
        after = items[stop][0] if stop < n else end
        yield [m for _, m in items[start:stop]], after
        start = stop


def _order(item: Keyed) -> tuple[datetime, uuid.UUID]:
    return item[0], item[1].message_id
