"""V2, message-backed: announcements and channels from `messages`.

A guest sees the union of
  * every announcement of the event;
  * channel messages whose scheduled message (joined by
    `messages.scheduled_message_id`, never by event) targets no tags, or a tag
    the guest has;
  * direct messages with a delivery to the guest, by `user_id` or by any of
    their active guest rows (guests often sign up after the invitations);
  * the guest's own messages.
"""

from __future__ import annotations

from ..model import Cursor, FeedMessage, MessageType, ReadModel, Viewer
from ..pgtypes import Conn
from .base import START, to_message

# Same shape as v1: every branch is an index walk newest-first with its own
# LIMIT, merged by UNION (a message in two branches appears once) and cut to
# $5. A channel message whose scheduled message is missing has no audience we
# can check, so it is not shown (fail closed: a leak is worse than a gap).
PAGE_SQL = """
WITH page AS (
    SELECT id, created_at FROM (
        (SELECT m.id, m.created_at
           FROM public.messages m
          WHERE m.event_id = $1
            AND m.message_type = 'announcement'
            AND (m.created_at, m.id) < ($3::timestamptz, $4::uuid)
          ORDER BY m.created_at DESC, m.id DESC
          LIMIT $5)
        UNION
        (SELECT m.id, m.created_at
           FROM public.messages m
           JOIN public.scheduled_messages sm
             ON sm.id = m.scheduled_message_id AND sm.event_id = m.event_id
          WHERE m.event_id = $1
            AND m.message_type = 'channel'
            AND (m.created_at, m.id) < ($3::timestamptz, $4::uuid)
            AND (COALESCE(cardinality(sm.target_guest_tags), 0) = 0
                 OR sm.target_guest_tags && $6::text[])
          ORDER BY m.created_at DESC, m.id DESC
          LIMIT $5)
        UNION
        (SELECT m.id, m.created_at
           FROM public.messages m
          WHERE m.event_id = $1
            AND m.message_type = 'direct'
            AND (m.created_at, m.id) < ($3::timestamptz, $4::uuid)
            AND EXISTS (SELECT 1 FROM public.message_deliveries d
                         WHERE d.message_id = m.id
                           AND (d.user_id = $2 OR d.guest_id = ANY($7::uuid[])))
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
         WHERE d.message_id = m.id
           AND (d.user_id = $2 OR d.guest_id = ANY($7::uuid[]))
         ORDER BY d.created_at DESC, d.id DESC
         LIMIT 1) ld ON true
 ORDER BY p.created_at DESC, p.id DESC
"""


class V2MessagesStore:
    """The message-backed read model."""

    read_model: ReadModel = ReadModel.V2

    @property
    def name(self) -> str:
        """`v2_messages`."""
        return "v2_messages"

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
            list(viewer.tags),
            list(viewer.guest_ids),
            timeout=timeout,
        )
        # Only the direct branch reads deliveries; announcements and channels
        # are message-backed even when an SMS also went out for them.
        return [
            to_message(
                r,
                viewer,
                delivery_backed=(
                    r["message_type"] == MessageType.DIRECT.value
                    and r["delivery_status"] is not None
                ),
            )
            for r in rows
        ]
