"""Who may read an event's feed: its active guests, nobody else.

The stores check this inside their page statement (one round trip); this
stand-alone form serves callers that need the viewer without a page
(benchmarks, tools).
"""

from __future__ import annotations

import uuid

from ..model import Viewer
from ..pgtypes import Conn
from .base import VIEWER_CTE

VIEWER_SQL = f"WITH {VIEWER_CTE} SELECT guest_ids, tags, guest_name FROM viewer"


async def load_viewer(
    conn: Conn, event_id: uuid.UUID, user_id: uuid.UUID, *, timeout: float
) -> Viewer | None:
    """The caller as a guest of the event, or None when they are not an active one."""
    row = await conn.fetchrow(VIEWER_SQL, event_id, user_id, timeout=timeout)
    if row is None:
        return None
    return Viewer(
        user_id=user_id,
        event_id=event_id,
        guest_ids=tuple(row["guest_ids"]),
        tags=tuple(row["tags"]),
        guest_name=row["guest_name"],
    )
