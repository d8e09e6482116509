"""V1, delivery-backed: the legacy feed, unchanged in meaning.

A guest sees the event's messages that have a `message_deliveries` row with
their `user_id`, plus their own messages.
"""

from __future__ import annotations

import asyncpg

from ..domain.model import ReadModel
from .base import VIEWER_CTE, SqlFeedStore, rows_and_result

# Each branch walks an index newest-first and stops at its LIMIT, then the
# merge keeps the top $5: the cost follows the page size, not the history.
# DISTINCT ON over the merged branches drops a message that two branches
# produce (a plain UNION also would, but hashes every column, content too).
# Retries write several delivery rows per recipient; EXISTS counts a message
# once however many there are, and the LATERAL picks the latest for its status.
PAGE_SQL = f"""
WITH {VIEWER_CTE},
page AS (
    SELECT DISTINCT ON (created_at, id) * FROM (
        (SELECT m.id, m.created_at, m.content, m.message_type, m.sender_user_id
           FROM public.messages m
          WHERE m.event_id = $1
            AND (m.created_at, m.id) < ($3::timestamptz, $4::uuid)
            -- A scalar subquery, not EXISTS: PostgreSQL may turn EXISTS into
            -- a hash semi-join over all the user's deliveries and the whole
            -- event (seen in generic plans); a subquery stays a probe per
            -- message, in index order, stopping at the LIMIT.
            AND (SELECT true FROM public.message_deliveries d
                  WHERE d.message_id = m.id AND d.user_id = $2
                  LIMIT 1)
          ORDER BY m.created_at DESC, m.id DESC
          LIMIT $5)
        UNION ALL
        (SELECT m.id, m.created_at, m.content, m.message_type, m.sender_user_id
           FROM public.messages m
          WHERE m.event_id = $1
            AND m.sender_user_id = $2
            AND (m.created_at, m.id) < ($3::timestamptz, $4::uuid)
          ORDER BY m.created_at DESC, m.id DESC
          LIMIT $5)
    ) branches
    ORDER BY created_at DESC, id DESC
    LIMIT $5
),
{rows_and_result("d.user_id = $2")}"""


class V1DeliveriesStore(SqlFeedStore):
    """The delivery-backed read model."""

    read_model: ReadModel = ReadModel.V1
    sql = PAGE_SQL

    @property
    def name(self) -> str:
        """`v1_deliveries`."""
        return "v1_deliveries"

    def delivery_backed(self, row: asyncpg.Record) -> bool:
        """Every non-own row came through a delivery; an own row may have one too."""
        return row["delivery_status"] is not None
