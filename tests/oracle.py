"""The feed rules written plainly in Python, independent of the SQL.

Tests compare what the server returns with what this computes from the rows
the `World` wrote.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from .factory import Delivery, World


@dataclass(frozen=True)
class Expected:
    message_id: uuid.UUID
    type: str
    is_own: bool
    is_delivery_backed: bool
    delivery_status: str
    sender_name: str


def active_guests(world: World, event_id: uuid.UUID, user_id: uuid.UUID) -> list:
    return [
        g for g in world.guests if g.event_id == event_id and g.user_id == user_id and not g.removed
    ]


def feed(world: World, event_id: uuid.UUID, user_id: uuid.UUID, model: str) -> list[Expected]:
    """The whole feed, newest first by (created_at, id)."""
    guests = active_guests(world, event_id, user_id)
    assert guests, "the oracle is only defined for active guests"
    guest_ids = {g.id for g in guests}
    tags = {t for g in guests for t in g.tags}
    guest_name = next((g.guest_name for g in guests if g.guest_name), None)

    def mine(d: Delivery) -> bool:
        if model == "v1":
            return d.user_id == user_id
        return d.user_id == user_id or (d.guest_id is not None and d.guest_id in guest_ids)

    out = []
    for m in world.messages.values():
        if m.event_id != event_id:
            continue
        own = m.sender == user_id
        dels = [d for d in world.deliveries if d.message_id == m.id and mine(d)]
        if model == "v1":
            visible = bool(dels) or own
            backed = bool(dels)
        else:
            backed = m.type == "direct" and bool(dels)
            visible = own or backed or m.type == "announcement"
            if m.type == "channel" and m.scheduled_id is not None:
                sm = world.scheduled[m.scheduled_id]
                if sm.event_id == event_id and (not sm.tags or tags & set(sm.tags)):
                    visible = True
        if not visible:
            continue
        latest = max(dels, key=lambda d: (d.created_at, d.id)) if dels else None
        status = latest.status if latest else ("sent" if own else "")
        full_name = world.users.get(m.sender, (None, None))[0] if m.sender else None
        sender = (full_name or guest_name or "You") if own else (full_name or "Host")
        out.append((m.created_at, m.id, Expected(m.id, m.type, own, backed, status, sender)))
    out.sort(key=lambda t: (t[0], t[1]), reverse=True)
    return [e for _, _, e in out]
