"""V1, delivery-backed: the legacy feed, unchanged in meaning.

A guest sees the event's messages that have a `message_deliveries` row with
their `user_id`, plus their own messages.
"""

from __future__ import annotations

from ..model import Cursor, FeedMessage, ReadModel, Viewer
from ..pgtypes import Conn
from .base import START, to_message

# Each branch walks an index newest-first and stops at its LIMIT, then the
# merge keeps the top $5: the cost follows the page size, not the history.
# UNION (not UNION ALL) drops a message that both branches produce.
# Retries write several delivery rows per recipient; EXISTS counts a message
# once however many there are, and the LATERAL picks the latest for its status.
PAGE_SQL = """
WITH page AS (
    SELECT id, created_at FROM (
        (SELECT m.id, m.created_at
           FROM public.messages m
          WHERE m.event_id = $1
            AND (m.created_at, m.id) < ($3::timestamptz, $4::uuid)
            AND EXISTS (SELECT 1 FROM public.message_deliveries d
                         WHERE d.message_id = m.id AND d.user_id = $2)
          ORDER BY m.created_at DESC, m.id DESC
          LIMIT $5)
        UNION
        (SELECT m.id, m.created_at
           FROM public.messages m
          WHERE m.event_id = $1
            AND m.sender_user_id = $2
            AND (m.created_at, m.id) < ($3::timestamptz, $4::uuid)
          ORDER BY m.created_at DESC, m.id DESC
          LIMIT $5)
    ) branches
    ORDER BY created_at DESC, id DESC
    LIMIT $5
)
SELECT m.id, m.content, m.created_at, m.message_type::text AS message_type,
       COALESCE(m.sender_user_id = $2, false) AS is_own,
       u.full_name, u.avatar_url,
       ld.sms_status AS delivery_status
  FROM page p
  JOIN public.messages m ON m.id = p.id
  LEFT JOIN public.users u ON u.id = m.sender_user_id
  LEFT JOIN LATERAL (
        SELECT d.sms_status FROM public.message_deliveries d
         WHERE d.message_id = m.id AND d.user_id = $2
         ORDER BY d.created_at DESC, d.id DESC
         LIMIT 1) ld ON true
 ORDER BY p.created_at DESC, p.id DESC
"""


class V1DeliveriesStore:
    """The delivery-backed read model."""

    read_model: ReadModel = ReadModel.V1

    @property
    def name(self) -> str:
        """`v1_deliveries`."""
        return "v1_deliveries"

    async def page(
        self,
        conn: Conn,
        viewer: Viewer,
        cursor: Cursor | None,
        limit: int,
        *,
        timeout: float,
    ) -> list[FeedMessage]:
        """See `FeedStore.page`."""
        at = cursor or START
        rows = await conn.fetch(
            PAGE_SQL,
            viewer.event_id,
            viewer.user_id,
            at.created_at,
            at.message_id,
            limit,
            timeout=timeout,
        )
        # Every non-own row came through a delivery; an own row may have one too.
        return [
            to_message(r, viewer, delivery_backed=r["delivery_status"] is not None) for r in rows
        ]
