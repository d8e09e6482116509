"""Who may read an event's feed: its active guests, nobody else."""

from __future__ import annotations

import uuid

from ..model import Viewer
from ..pgtypes import Conn

GUEST_ROWS_SQL = """
SELECT id, guest_name, guest_tags
  FROM public.event_guests
 WHERE event_id = $1 AND user_id = $2 AND removed_at IS NULL
 ORDER BY created_at, id
"""


async def load_viewer(
    conn: Conn, event_id: uuid.UUID, user_id: uuid.UUID, *, timeout: float
) -> Viewer | None:
    """Returns the caller as a guest of the event, or None when they are not one.

    Removed rows never count. Unknown events and non-guests look the same, so
    the answer does not reveal which events exist.
    """
    rows = await conn.fetch(GUEST_ROWS_SQL, event_id, user_id, timeout=timeout)
    if not rows:
        return None
    tags = sorted({t for r in rows for t in (r["guest_tags"] or ())})
    name = next((r["guest_name"] for r in rows if r["guest_name"]), None)
    return Viewer(
        user_id=user_id,
        event_id=event_id,
        guest_ids=tuple(r["id"] for r in rows),
        tags=tuple(tags),
        guest_name=name,
    )
