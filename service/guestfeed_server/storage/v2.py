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

import asyncpg

from ..domain.model import MessageType, ReadModel
from .base import VIEWER_CTE, SqlFeedStore, rows_and_result

# Same shape as v1: every branch is an index walk newest-first with its own
# LIMIT, merged with DISTINCT ON (a message in two branches appears once; a
# plain UNION would hash every column, content too) and cut to $5. A channel
# message whose scheduled message is missing has no audience we can check,
# so it is not shown (fail closed: a leak is worse than a gap).
#
# The floor keeps sparse branches from walking the whole history. Every
# guest sees every announcement, so if $5 announcements lie below the cursor,
# the page cannot reach past the $5-th of them: no other branch needs to look
# further down. Without the floor, a guest with ten direct messages among an
# event's three thousand makes the direct branch probe all three thousand.
# When fewer than $5 announcements remain, the floor is the start of time.
PAGE_SQL = f"""
WITH {VIEWER_CTE},
floor AS (
    SELECT m.created_at, m.id
      FROM public.messages m
     WHERE m.event_id = $1
       AND m.message_type = 'announcement'
       AND (m.created_at, m.id) < ($3::timestamptz, $4::uuid)
     ORDER BY m.created_at DESC, m.id DESC
     OFFSET $5 - 1
     LIMIT 1
), bounds AS (
    SELECT COALESCE((SELECT created_at FROM floor), '-infinity'::timestamptz) AS at,
           COALESCE((SELECT id FROM floor), '00000000-0000-0000-0000-000000000000'::uuid) AS id
), page AS (
    SELECT DISTINCT ON (created_at, id) * FROM (
        (SELECT m.id, m.created_at, m.content, m.message_type, m.sender_user_id
           FROM public.messages m
          WHERE m.event_id = $1
            AND m.message_type = 'announcement'
            AND (m.created_at, m.id) < ($3::timestamptz, $4::uuid)
          ORDER BY m.created_at DESC, m.id DESC
          LIMIT $5)
        UNION ALL
        (SELECT m.id, m.created_at, m.content, m.message_type, m.sender_user_id
           FROM public.messages m
           -- A primary-key probe per channel message in range (LIMIT 1 stops
           -- the planner from hashing every scheduled message of the event,
           -- which grows with history). No row: no audience, not shown.
           CROSS JOIN LATERAL (
                SELECT sm.target_guest_tags FROM public.scheduled_messages sm
                 WHERE sm.id = m.scheduled_message_id AND sm.event_id = m.event_id
                 LIMIT 1) sm
          WHERE m.event_id = $1
            AND m.message_type = 'channel'
            AND (m.created_at, m.id) < ($3::timestamptz, $4::uuid)
            AND (m.created_at, m.id) >= ((SELECT at FROM bounds), (SELECT id FROM bounds))
            AND (COALESCE(cardinality(sm.target_guest_tags), 0) = 0
                 OR sm.target_guest_tags && (SELECT tags FROM viewer))
          ORDER BY m.created_at DESC, m.id DESC
          LIMIT $5)
        UNION ALL
        (SELECT m.id, m.created_at, m.content, m.message_type, m.sender_user_id
           FROM public.messages m
          WHERE m.event_id = $1
            AND m.message_type = 'direct'
            AND (m.created_at, m.id) < ($3::timestamptz, $4::uuid)
            AND (m.created_at, m.id) >= ((SELECT at FROM bounds), (SELECT id FROM bounds))
            -- A per-row probe, never a hash semi-join (see v1.py).
            AND (SELECT true FROM public.message_deliveries d
                  WHERE d.message_id = m.id
                    AND (d.user_id = $2
                         OR d.guest_id = ANY((SELECT guest_ids FROM viewer)::uuid[]))
                  LIMIT 1)
          ORDER BY m.created_at DESC, m.id DESC
          LIMIT $5)
        UNION ALL
        (SELECT m.id, m.created_at, m.content, m.message_type, m.sender_user_id
           FROM public.messages m
          WHERE m.event_id = $1
            AND m.sender_user_id = $2
            AND (m.created_at, m.id) < ($3::timestamptz, $4::uuid)
            AND (m.created_at, m.id) >= ((SELECT at FROM bounds), (SELECT id FROM bounds))
          ORDER BY m.created_at DESC, m.id DESC
          LIMIT $5)
    ) branches
    ORDER BY created_at DESC, id DESC
    LIMIT $5
),
{rows_and_result("(d.user_id = $2 OR d.guest_id = ANY((SELECT guest_ids FROM viewer)::uuid[]))")}"""


class V2MessagesStore(SqlFeedStore):
    """The message-backed read model."""

    read_model: ReadModel = ReadModel.V2
    sql = PAGE_SQL

    @property
    def name(self) -> str:
        """`v2_messages`."""
        return "v2_messages"

    def delivery_backed(self, row: asyncpg.Record) -> bool:
        """Only the direct branch reads deliveries; announcements and channels
        are message-backed even when an SMS also went out for them."""
        return bool(
            row["message_type"] == MessageType.DIRECT.value and row["delivery_status"] is not None
        )
